"""`nats://` and `tls://`: task records in a JetStream KV bucket, delivery through a
work-queue stream.

The layout (subjects, consumers, keys) is in `layout.py`; docs/backends/nats.md explains it
with the settings. How each guarantee is kept:

- **Fence.** A record's KV revision changes with every write and so does its `version`:
  `update(task, v)` writes with "expected last revision = the revision at which version `v`
  was read", so it lands only if nobody wrote since. The revision of the last record this
  process read or wrote is cached, so a checkpoint is one round trip.
- **Submit** is two writes, made crash-safe by their order (publish first): the message is
  published (`Nats-Msg-Id` `<id>.1`: a repeated publish is absorbed) and then the record is
  created. A crash between leaves a message without a record; a claimer that meets one
  waits for the record while the message is younger than `publish_grace` (server timestamp)
  and then drops it: that submit never returned, so no task was lost. A crash before the
  publish leaves at most an idempotency-key entry, which the next submit with that key
  adopts. Nothing is ever stored without being queued, and no scan is needed to find out.
- **Requeue** publishes first too (header `Salvador-Version`: the version it will write;
  a claimer that finds an older record waits for the write) and deletes its message again
  if the fenced write is refused; it then voids the lease entry.
- **Leases.** A delivery's lease is the consumer's AckWait (or `nak(delay=lease)`, which
  sets a delivered message's timer, when a claim asks for another length), renewed by
  `in_progress()`. The server accepts a late ack from a delivery that is no longer current
  (nats-server issue 4786), so the lease is also an entry `l.<id>` holding the current
  delivery's ack subject, written at claim time: `ack`, `extend` and `release` first
  compare-and-set it by revision, and refuse a claim whose deadline (measured from before
  the pull request, so never later than the server's) has passed. The revision, not the
  ack, decides whose writes count: `settle` acks only after its fenced write passed.
- **Claims wait** in a pull request with an expiry (`pulls.py`), never in a sleep loop.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar, cast

from nats import errors as nx
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js import errors as jx
from nats.js.kv import KeyValue

from salvador_core.errors import (
    BackendNotOpenError,
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    CorruptRecordError,
    LeaseLostError,
    PayloadTooLargeError,
)
from salvador_core.durability import Finding
from salvador_core.task import (
    Claim,
    Page,
    RecordVersionError,
    Task,
    TaskStatus,
    decode_task,
    encode_task,
    purge_statuses,
    statuses_of,
    utcnow,
)
from salvador_nats import layout
from salvador_nats.claims import ClaimPipeline
from salvador_nats.connection import NatsSettings, provision
from salvador_nats.delays import Promoter
from salvador_nats.durability import nats_findings
from salvador_nats.pulls import PullRouter, api_next

__all__ = ["NatsBackend"]

log = logging.getLogger("salvador.nats")

#: NATS servers refuse messages over `max_payload` (1 MiB by default). A record holds the body
#: in base64 (4/3 larger) beside the step results, so a body and one result at this limit
#: (7/3 of it) still fit in one message. A record that grows past the server's limit anyway
#: (many large results) is refused with `PayloadTooLargeError`, nothing written.
MAX_PAYLOAD_BYTES = 400 * 1024

#: A lease is treated as lost this long before its deadline: the time an ack may take to
#: reach the server after the lease was checked.
LEASE_MARGIN = 0.05

#: AckWait of the delayed-subject consumers (how soon a promoter that died mid-batch is
#: replaced); the ready consumer's AckWait is the lease of the claim that creates it.
DELAY_ACK_WAIT = 30.0

_WRONG_LAST = (10071, 10164)  # JSStreamWrongLastSequence(Constant)Err
_UNAVAILABLE = (
    nx.ConnectionClosedError,
    nx.NoServersError,
    nx.TimeoutError,
    nx.StaleConnectionError,
    nx.ConnectionReconnectingError,
    nx.OutboundBufferLimitError,
    nx.NoRespondersError,
    jx.NoStreamResponseError,
    jx.ServiceUnavailableError,
    OSError,
    asyncio.TimeoutError,
)

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _guarded(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """Driver errors become salvador's: `BackendUnavailableError` naming the redacted URL for
    an unreachable server, one without JetStream, or one out of resources."""

    @functools.wraps(fn)
    async def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except jx.APIError as exc:
            backend = cast(NatsBackend, args[0])
            if exc.code in (503, 500) or exc.err_code == 10023:  # no JetStream / no resources
                raise backend._unavailable(exc) from exc
            raise
        except _UNAVAILABLE as exc:
            backend = cast(NatsBackend, args[0])
            raise backend._unavailable(exc) from exc

    return guarded


@dataclass
class _Queue:
    """What a process knows about one workflow's queue."""

    workflow: str
    ack_wait: float
    promoter: Promoter
    claims: ClaimPipeline


class _StaleLease(Exception):
    """The lease entry's revision moved on: another delivery (or a requeue) replaced it."""


class NatsBackend:
    """Task store and queue on NATS JetStream: `nats://host:4222?stream=...&bucket=...`.

    Build it with `NatsBackend.from_url(url, **options)`. Options (URL query or keyword):
    `stream` and `bucket` (names, default `salvador`), `replicas` (1-5, for the stream and
    bucket it creates), `publish_grace` (seconds a message waits for its record, default
    30), `duplicate_window` (seconds, default 120), `connect_timeout`, `name` (shown in the
    server's monitoring), `token`, `nkey` (seed file), `creds` (.creds file), `tls_ca`,
    `tls_cert`, `tls_key`, `tls_verify`. `tls://` (or any tls_ option) turns on TLS;
    `nats://user:password@host` logs in with a password.
    """

    max_payload_bytes: int | None = MAX_PAYLOAD_BYTES

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self.where = settings.where
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._router: PullRouter | None = None
        self._queues: dict[str, _Queue] = {}
        self._queue_lock = asyncio.Lock()
        self._revisions: dict[str, tuple[int, int]] = {}  # task id -> (version, KV revision)
        self._connect_errors: builtins.list[Exception] = []  # what the client reported while connecting

    @classmethod
    def from_url(cls, url: str, **options: Any) -> NatsBackend:
        """An unopened backend for `url`; `ConfigurationError` for a bad URL or option."""
        return cls(NatsSettings.from_url(url, options))

    def __repr__(self) -> str:
        return (
            f"NatsBackend({self.where!r}, stream={self.settings.stream!r}, "
            f"bucket={self.settings.bucket!r})"
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, then find or create the stream and the bucket. Safe to call twice."""
        if self._nc is not None:
            return
        nc = await self._connect()
        try:
            js = nc.jetstream(timeout=10.0)
            kv = await _unavailable_as_error(self, provision(js, self.settings))
            router = PullRouter(nc)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js, self._kv, self._router = nc, js, kv, router

    async def _connect(self) -> Client:
        """A connection that gives up after two tries per server (so an unreachable server
        is reported now), then reconnects for ever once it was up."""
        nc = Client()
        options = self.settings.connect_options()
        options.update(
            max_reconnect_attempts=1,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._connect_errors = []
        # nats-py can hang after a failed TLS handshake instead of trying the next server:
        # the whole first connection gets the time two tries per server may take.
        limit = 2 * len(self.settings.servers) * (self.settings.connect_timeout + 0.5) + 1.0
        try:
            await asyncio.wait_for(nc.connect(**options), limit)
        except (*_UNAVAILABLE, nx.Error) as exc:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2)
            raise self._connect_failed(exc) from None
        nc.options["max_reconnect_attempts"] = -1
        return nc

    def _connect_failed(self, exc: BaseException) -> ConfigurationError | BackendUnavailableError:
        """The error for a first connection that failed. The client reports each try's
        reason to error_cb and ends with "no servers available" or a timeout; a refusal of
        the credentials or of TLS among those reasons is the news (later tries may only
        see the connection reset that followed it), else the last reason."""
        seen = [*self._connect_errors, exc]
        refused = next((e for e in seen if isinstance(e, nx.AuthorizationError)
                        or "authorization" in str(e).lower()), None)
        if refused is not None:
            return ConfigurationError(
                f"NATS at {self.where} refused the credentials ({refused}); check the user and "
                "password, token, nkey or creds file."
            )
        tls = next((e for e in seen if isinstance(e, ssl.SSLError)), None)
        if tls is not None:
            return ConfigurationError(
                f"TLS with NATS at {self.where} failed ({tls}); check tls_ca (the CA that signed "
                "the server's certificate), tls_cert/tls_key, or the host name in the URL."
            )
        cause = next((e for e in reversed(seen) if not isinstance(e, nx.NoServersError)), exc)
        return self._unavailable(cause)

    async def _on_error(self, exc: Exception) -> None:
        if len(self._connect_errors) < 20:
            self._connect_errors.append(exc)
        log.debug("NATS at %s: %s", self.where, exc or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        if self._nc is not None and not self._nc.is_closed:  # not our own close()
            log.warning("NATS at %s: disconnected; reconnecting", self.where)

    async def _on_reconnected(self) -> None:
        log.warning("NATS at %s: reconnected", self.where)

    async def close(self) -> None:
        """Give back what was pulled ahead, stop the promoters, close the connection. Safe
        to call twice."""
        if self._nc is None:
            return
        queues, self._queues = self._queues, {}
        for queue in queues.values():
            await queue.promoter.stop()
            await queue.claims.close()
        nc, self._nc = self._nc, None
        if self._router is not None:
            await self._router.stop()
        self._router = self._js = self._kv = None
        if not nc.is_closed:
            try:
                await nc.flush(timeout=2)
            except Exception:
                pass  # closing anyway; unflushed acks are redelivered and acked again
            await nc.close()

    async def __aenter__(self) -> NatsBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def kv(self) -> KeyValue:
        """The bucket (for tools and tests that look at the raw layout)."""
        if self._kv is None:
            raise BackendNotOpenError(f"NATS ({self.where})")
        return self._kv

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context (for tools and tests that look at the raw layout)."""
        if self._js is None:
            raise BackendNotOpenError(f"NATS ({self.where})")
        return self._js

    @property
    def nc(self) -> Client:
        """The connection."""
        if self._nc is None:
            raise BackendNotOpenError(f"NATS ({self.where})")
        return self._nc

    # -- store ---------------------------------------------------------------------------

    @_guarded
    async def create(self, task: Task) -> Task:
        """Insert `task` (version 1): the idempotency-key entry first (`create`: one
        winner), then the record (`create`). A duplicate returns the stored task."""
        target = await self._reserve_key(task)
        if isinstance(target, Task):
            return target
        stored = (task if target == task.id else task.evolve(id=target)).evolve(version=1)
        return await self._create_record(stored)

    @_guarded
    async def get(self, task_id: str) -> Task | None:
        found = await self._read(task_id)
        if found is None:
            return None
        raw, revision = found
        task = decode_task(raw, task_id)
        self._remember(task_id, task.version, revision)
        return task

    @_guarded
    async def update(self, task: Task, expected_version: int) -> Task:
        """Compare-and-set by KV revision (see the module docstring)."""
        stored = task.evolve(version=expected_version + 1, updated_at=utcnow())
        return await self._write(stored, expected_version)

    @_guarded
    async def durability_findings(self) -> builtins.list[Finding]:
        """What a crash would lose with this stream, bucket and server: storage, replicas,
        limits, the server's fsync interval (see salvador_nats/durability.py). Used by
        `salvador check` and `Engine.open`."""
        return await nats_findings(self.js, self.nc, self.settings)

    @_guarded
    async def list(
        self,
        *,
        workflow: str | None = None,
        status: TaskStatus | Iterable[TaskStatus] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Tasks in ascending id order. Reads the key list of the bucket (`t.*`) and then
        the records after `cursor` until a page is full: an admin operation, whose cost grows
        with the number of records (the engine's hot path never lists)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        wanted = statuses_of(status)
        ids = [i for i in await self._record_ids() if cursor is None or i > cursor]
        found: builtins.list[Task] = []
        for start in range(0, len(ids), 64):
            chunk = ids[start : start + 64]
            for task in await asyncio.gather(*(self._readable(i) for i in chunk)):
                if task is None or (workflow is not None and task.workflow != workflow):
                    continue
                if wanted is None or task.status in wanted:
                    found.append(task)
            if len(found) > limit:
                break
        page = found[:limit]
        return Page(page, page[-1].id if len(found) > limit else None)

    @_guarded
    async def delete(self, task_id: str) -> bool:
        """Remove the record, its lease and its idempotency-key entry (a queued message
        for it is dropped by the claimer that meets it)."""
        found = await self._read(task_id)
        if found is None:
            return False
        try:
            task: Task | None = decode_task(found[0], task_id)
        except (CorruptRecordError, RecordVersionError):
            task = None
        await self._forget(task_id, task)
        return True

    @_guarded
    async def purge(self, *, older_than: datetime, statuses: Iterable[TaskStatus]) -> int:
        """Delete terminal tasks last updated before `older_than`: reads every record (an
        admin operation, like `list`)."""
        wanted = purge_statuses(statuses)
        deleted = 0
        ids = await self._record_ids()
        for start in range(0, len(ids), 64):
            tasks = await asyncio.gather(*(self._readable(i) for i in ids[start : start + 64]))
            doomed = [t for t in tasks if t is not None and t.status in wanted and t.updated_at < older_than]
            await asyncio.gather(*(self._forget(t.id, t) for t in doomed))
            deleted += len(doomed)
        return deleted

    @_guarded
    async def quarantine(self, task: Task) -> Task:
        """Overwrite an unreadable record without a version check."""
        stored = task.evolve(version=task.version + 1, updated_at=utcnow())
        revision = await self.kv.put(layout.record_key(task.id), self._encode(stored))
        self._remember(task.id, stored.version, revision)
        return stored

    # -- queue ---------------------------------------------------------------------------

    @_guarded
    async def enqueue(self, workflow: str, task_id: str, *, not_before: datetime | None = None) -> None:
        """Publish the task's message (`Nats-Msg-Id` `<id>.1`, so a repeat within the
        duplicate window is absorbed); a future `not_before` goes to the delayed subject."""
        await self._publish(workflow, layout.check_task_id(task_id), version=None, not_before=not_before)

    @_guarded
    async def claim(self, workflow: str, *, lease: float, wait: float) -> Claim | None:
        """The next delivery turned into a claim: its record read and its lease entry
        written. Deliveries are pulled in batches and claims made ahead (`claims.py`);
        with none there, the claim waits in a pull request with an expiry, up to `wait`.
        Messages whose record is not (yet) there are dealt with in `_take`."""
        queue = await self._queue(workflow, lease)
        return await queue.claims.claim(lease, wait)

    @_guarded
    async def extend(self, claim: Claim, *, lease: float) -> Claim:
        """Renew the lease entry (compare-and-set) and the server's AckWait (`+WPI`, or
        `-NAK` with the lease as delay when it differs from the consumer's AckWait)."""
        revision, reply = _receipt(claim)
        self._check_deadline(claim)
        try:
            new_revision = await self._lease_write(claim.task_id, _lease_value(reply, lease), revision)
        except _StaleLease:
            raise LeaseLostError(claim.task_id, "another delivery holds the task now") from None
        queue = await self._queue(claim.workflow, lease)
        renewed_at = time.time()
        if abs(queue.ack_wait - lease) < 0.001:
            await self.nc.publish(reply, b"+WPI")
        else:
            await self.nc.publish(reply, _nak(lease))
        return Claim(
            claim.task_id, claim.workflow, f"{new_revision} {reply}", claim.deliveries, renewed_at + lease
        )

    @_guarded
    async def ack(self, claim: Claim) -> None:
        """End the lease (compare-and-set delete of its entry), then ack the message."""
        await self._end_lease(claim)
        await self.nc.publish(_receipt(claim)[1], b"+ACK")

    @_guarded
    async def release(self, claim: Claim, *, delay: float = 0.0) -> None:
        """End the lease, then `-NAK` the message (with `delay`: the server hands it back
        when the delay is over; no lease is held meanwhile)."""
        await self._end_lease(claim)
        reply = _receipt(claim)[1]
        await self.nc.publish(reply, _nak(delay) if delay > 0 else b"-NAK")

    # -- backend -------------------------------------------------------------------------

    @_guarded
    async def submit(self, task: Task) -> Task:
        """Idempotency-key entry, then the message, then the record (module docstring)."""
        target = await self._reserve_key(task)
        if isinstance(target, Task):
            return target
        adopted = target != task.id
        stored = (task.evolve(id=target) if adopted else task).evolve(version=1)
        data = self._encode(stored)
        published = time.monotonic()
        # An adopted id's first message may have been dropped already (its producer died
        # before the record, and a claimer gave up on it), while its Nats-Msg-Id is still in
        # the duplicate window: this publish must not be absorbed as a repeat of it.
        suffix = f".{secrets.token_hex(4)}" if adopted else ""
        await self._publish(
            stored.workflow, stored.id, version=1, not_before=stored.not_before, suffix=suffix
        )
        result = await self._create_record(stored, data)
        if result.id == stored.id and time.monotonic() - published > self.settings.publish_grace / 2:
            # Paused so long that a claimer may have given up waiting for this record and
            # dropped the message: publish once more (a duplicate is fenced by the record).
            await self._publish(stored.workflow, stored.id, version=1, not_before=stored.not_before,
                                suffix=f".{secrets.token_hex(4)}")
        return result

    @_guarded
    async def requeue(self, task: Task, expected_version: int) -> Task:
        """Publish the new message, then the fenced write (its message is deleted again
        if the write is refused), then void any lease from before."""
        stored = task.evolve(version=expected_version + 1, updated_at=utcnow())
        ack = await self._publish(stored.workflow, stored.id, version=stored.version,
                                  not_before=stored.not_before)
        try:
            await self._write(stored, expected_version)
        except ConflictError:
            if not ack.duplicate:
                try:
                    await self.js.delete_msg(self.settings.stream, ack.seq)
                except jx.NotFoundError:
                    pass  # already claimed and dropped (its record never got the version)
            raise
        await self.kv.delete(layout.lease_key(stored.id))
        return stored

    @_guarded
    async def settle(self, task: Task, expected_version: int, claim: Claim) -> Task:
        """The fenced final write, then the ack. The write passing is what makes the ack
        safe even from a claim whose lease ran out: the task is terminal now, so whoever
        holds the message next finds it so and acks it."""
        stored = await self._write(
            task.evolve(version=expected_version + 1, updated_at=utcnow()), expected_version
        )
        revision, reply = _receipt(claim)
        await self.nc.publish(reply, b"+ACK")
        await self._drop_lease_entry(claim.task_id, revision)
        return stored

    # -- internals: records ---------------------------------------------------------------

    async def _read(self, task_id: str) -> tuple[bytes, int] | None:
        """The record's raw bytes and KV revision, or None."""
        try:
            entry = await self.kv.get(layout.record_key(layout.check_task_id(task_id)))
        except jx.KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return entry.value, entry.revision

    async def _readable(self, task_id: str) -> Task | None:
        """The decoded task, or None for a missing, corrupt or newer-format record."""
        found = await self._read(task_id)
        if found is None:
            return None
        try:
            return decode_task(found[0], task_id)
        except (CorruptRecordError, RecordVersionError):
            return None

    async def _record_ids(self) -> builtins.list[str]:
        """Every task id in the bucket, sorted: the last entry per `t.*` key, headers only.
        (A set: the watcher's ordered consumer restarts after a missed heartbeat on a busy
        server and may hand out some keys again.)"""
        watcher = await self.kv.watch("t.*", ignore_deletes=True, meta_only=True)
        ids: set[str] = set()
        try:
            async for entry in watcher:
                if entry is None:
                    break
                ids.add(entry.key[2:])
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return sorted(ids)

    async def _create_record(self, stored: Task, data: bytes | None = None) -> Task:
        key = layout.record_key(layout.check_task_id(stored.id))
        try:
            revision = await self.kv.create(key, data if data is not None else self._encode(stored))
        except jx.KeyWrongLastSequenceError:
            existing = await self.get(stored.id)
            if existing is not None:
                return existing
            # Deleted meanwhile: try once more.
            revision = await self.kv.create(key, data if data is not None else self._encode(stored))
        self._remember(stored.id, 1, revision)
        return stored

    async def _reserve_key(self, task: Task) -> str | Task:
        """The id under which `task` is to be stored, or the stored task holding its
        idempotency key. A key entry whose record is missing belongs to a producer that
        crashed (or is still writing): its id is adopted, so both end with one task."""
        layout.check_task_id(task.id)
        if task.idempotency_key is None:
            return task.id
        key = layout.idempotency_key(task.workflow, task.idempotency_key)
        for _ in range(5):
            try:
                await self.kv.create(key, task.id.encode())
                return task.id
            except jx.KeyWrongLastSequenceError:
                pass
            try:
                entry = await self.kv.get(key)
            except jx.KeyNotFoundError:
                continue  # deleted between the two calls: race for it again
            owner = (entry.value or b"").decode()
            existing = await self.get(owner)
            return existing if existing is not None else owner
        raise ConflictError(task.id, 0, None)

    async def _write(self, stored: Task, expected_version: int) -> Task:
        """Write `stored` if the record is still at `expected_version` (by KV revision)."""
        key = layout.record_key(layout.check_task_id(stored.id))
        data = self._encode(stored)
        known = self._revisions.get(stored.id)
        for _ in range(3):
            if known is None or known[0] != expected_version:
                found = await self._read(stored.id)
                if found is None:
                    raise ConflictError(stored.id, expected_version, None)
                try:
                    version = decode_task(found[0], stored.id).version
                except (CorruptRecordError, RecordVersionError):
                    raise ConflictError(stored.id, expected_version, None) from None
                if version != expected_version:
                    raise ConflictError(stored.id, expected_version, version)
                known = (version, found[1])
            try:
                revision = await self.kv.update(key, data, last=known[1])
            except jx.KeyWrongLastSequenceError:
                known = None  # someone wrote since we read: look again
                continue
            self._remember(stored.id, stored.version, revision)
            return stored
        raise ConflictError(stored.id, expected_version, None)

    def _encode(self, task: Task) -> bytes:
        # Room for the KV subject and headers within the server's max_payload.
        return _record(task, self.nc.max_payload - 1024)

    def _remember(self, task_id: str, version: int, revision: int) -> None:
        cache = self._revisions
        if len(cache) >= 100_000 and task_id not in cache:
            del cache[next(iter(cache))]  # the oldest entry
        cache[task_id] = (version, revision)

    async def _forget(self, task_id: str, task: Task | None) -> None:
        """Purge a task's record, lease and (if it still points here) idempotency key."""
        kv = self.kv
        if task is not None and task.idempotency_key is not None:
            key = layout.idempotency_key(task.workflow, task.idempotency_key)
            try:
                entry = await kv.get(key)
                if (entry.value or b"").decode() == task_id:
                    await kv.purge(key)
            except jx.KeyNotFoundError:
                pass
        await kv.purge(layout.record_key(task_id))
        await kv.purge(layout.lease_key(task_id))
        self._revisions.pop(task_id, None)

    # -- internals: queue -----------------------------------------------------------------

    async def _publish(
        self, workflow: str, task_id: str, *, version: int | None, not_before: datetime | None,
        suffix: str = "",
    ) -> api.PubAck:
        """Publish a task's message: to the ready subject, or with a future `not_before`
        to the delayed one. `version` (the record version it is for) goes in a header."""
        headers = {}
        if version is not None:
            headers[layout.HEADER_VERSION] = str(version)
        msg_id = f"{task_id}.{version or 1}{suffix}"
        due = not_before.timestamp() if not_before is not None else 0.0
        if due > time.time():
            subject = layout.delayed_subject(self.settings.stream, workflow)
            headers[layout.HEADER_DUE] = str(int(due * 1000))
            headers[layout.HEADER_MSG_ID] = msg_id + ".d"
        else:
            subject = layout.ready_subject(self.settings.stream, workflow)
            headers[layout.HEADER_MSG_ID] = msg_id
        return await self.js.publish(subject, task_id.encode(), headers=headers)

    async def _queue(self, workflow: str, lease: float) -> _Queue:
        """This process's view of `workflow`'s queue: consumers found or created (the ready
        one with AckWait = `lease`), its delayed tasks promoted, the promoter started."""
        queue = self._queues.get(workflow)
        if queue is not None:
            return queue
        async with self._queue_lock:
            queue = self._queues.get(workflow)
            if queue is not None:
                return queue
            stream = self.settings.stream
            ready = await self._consumer(
                layout.consumer_name("q", workflow), layout.ready_subject(stream, workflow), lease, workflow
            )
            delayed_name = layout.consumer_name("d", workflow)
            await self._consumer(
                delayed_name, layout.delayed_subject(stream, workflow), DELAY_ACK_WAIT, workflow
            )
            promoter = Promoter(
                self.js, self._router_or_fail(), stream=stream, consumer=delayed_name,
                ready=layout.ready_subject(stream, workflow),
            )
            await promoter.start()
            ack_wait = float(ready.config.ack_wait or lease)
            claims = ClaimPipeline(
                self._router_or_fail(), api_next(stream, ready.name),
                take=functools.partial(self._take, workflow, ack_wait),
                extend=self._extend_to, release=self.release,
            )
            queue = _Queue(workflow, ack_wait, promoter, claims)
            self._queues[workflow] = queue
            return queue

    async def _consumer(self, name: str, subject: str, ack_wait: float, workflow: str) -> api.ConsumerInfo:
        """The durable pull consumer `name` on `subject`, created if missing."""
        js, stream = self.js, self.settings.stream
        try:
            info: api.ConsumerInfo = await js.consumer_info(stream, name)
            return info
        except jx.NotFoundError:
            pass
        config = api.ConsumerConfig(
            durable_name=name,
            description=f"salvador: workflow {workflow!r}"[:200],
            filter_subject=subject,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=-1,  # the engine counts attempts; the server must never drop a task
            max_ack_pending=-1,
            max_waiting=4096,
            replay_policy=api.ReplayPolicy.INSTANT,
        )
        try:
            info = await js.add_consumer(stream, config)
        except jx.BadRequestError:
            info = await js.consumer_info(stream, name)  # created meanwhile by another process
        return info

    async def _take(
        self, workflow: str, ack_wait: float, msg: Msg, lease: float, sent_at: float
    ) -> Claim | None:
        """Turn a delivered message into a claim, or deal with it and return None: a message
        whose record is missing, or older than the version it was published for, waits for
        the writer (`nak` with a short, growing delay) while it is younger than
        `publish_grace`, and is dropped after that (its producer crashed before writing)."""
        task_id = msg.data.decode(errors="replace")
        meta = msg.metadata
        headers = msg.headers or {}
        published_for = int(headers[layout.HEADER_VERSION]) if layout.HEADER_VERSION in headers else None
        if not layout.TASK_ID.match(task_id):
            await self.nc.publish(msg.reply, b"+ACK")  # not ours to run: no such task can exist
            return None
        # The lease entry is taken while the record is read (one round trip, not two); a
        # message that turns out not to be claimable gives its entry back. A task can have
        # two messages at once (a producer's and its adopting retry's): the entry is taken
        # only if no live claim holds it, or a duplicate delivery would run the task beside
        # the first and read its `running` record as a lost worker's.
        found, revision = await asyncio.gather(
            self._read(task_id), self._take_lease(task_id, msg.reply, lease)
        )
        if revision is None:
            holder_left = max(0.05, self._lease_left(await self._lease_entry(task_id), lease))
            await self.nc.publish(msg.reply, _nak(holder_left))  # back when the holder is done
            return None
        task: Task | None = None
        version: int | None = None
        if found is not None:
            try:
                task = decode_task(found[0], task_id)
                version = task.version
                self._remember(task_id, task.version, found[1])
            except (CorruptRecordError, RecordVersionError):
                version = published_for or 1  # the engine dead-letters or leaves it
        if found is None or (published_for is not None and (version or 0) < published_for):
            age = time.time() - meta.timestamp.timestamp()
            if published_for is not None and age < self.settings.publish_grace:
                backoff = min(0.05 * 2 ** min(meta.num_delivered - 1, 8), self.settings.publish_grace - age)
                await self.nc.publish(msg.reply, _nak(max(backoff, 0.01)))
            else:
                await self.nc.publish(msg.reply, b"+ACK")
            await self._drop_lease_entry(task_id, revision)
            return None
        if abs(ack_wait - lease) >= 0.001:
            await self.nc.publish(msg.reply, _nak(lease))  # this delivery's timer: `lease`
        return Claim(
            task_id, workflow, f"{revision} {msg.reply}", meta.num_delivered, sent_at + lease, task
        )

    async def _take_lease(self, task_id: str, reply: str, lease: float) -> int | None:
        """Create the lease entry of `task_id` for this delivery, or take over one whose
        holder's lease ran out (it died); None while another claim's lease is live."""
        key = layout.lease_key(task_id)
        value = _lease_value(reply, lease)
        for _ in range(3):
            try:
                return await self.kv.create(key, value)
            except jx.KeyWrongLastSequenceError:
                pass
            entry = await self._lease_entry(task_id)
            if entry is None:
                continue  # ended meanwhile: try to create it again
            if self._lease_left(entry, lease) > 0:
                return None
            try:
                return await self.kv.update(key, value, last=entry.revision)
            except jx.KeyWrongLastSequenceError:
                continue
        return None

    async def _lease_entry(self, task_id: str) -> Any:
        try:
            return await self.kv.get(layout.lease_key(task_id))
        except (jx.KeyNotFoundError, jx.KeyDeletedError):
            return None

    @staticmethod
    def _lease_left(entry: Any, lease: float) -> float:
        """Seconds the claim behind a lease `entry` still holds it (0: ran out, or gone).
        The entry says when it was written and for how long (`reply lease written-at`);
        an entry of an older salvador (only the reply) counts as written just now."""
        if entry is None or not entry.value:
            return 0.0
        parts = entry.value.decode(errors="replace").split()
        try:
            held_for, written = float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            return lease
        return written + held_for - time.time()

    async def _extend_to(self, claim: Claim, lease: float) -> Claim:
        return await self.extend(claim, lease=lease)

    async def _drop_lease_entry(self, task_id: str, revision: int) -> None:
        """Delete the lease entry if it is still at `revision`: fire and forget, a plain
        publish to the bucket's subject (the server applies the revision check; nobody
        needs to hear that it refused)."""
        await self.nc.publish(
            f"$KV.{self.settings.bucket}.{layout.lease_key(task_id)}",
            b"",
            headers={"KV-Operation": "DEL", api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision)},
        )

    async def _lease_write(self, task_id: str, value: bytes, revision: int) -> int:
        try:
            return await self.kv.update(layout.lease_key(task_id), value, last=revision)
        except jx.KeyWrongLastSequenceError:
            raise _StaleLease from None

    async def _end_lease(self, claim: Claim) -> None:
        """Delete the lease entry if this claim still holds it, else `LeaseLostError`."""
        revision, _ = _receipt(claim)
        self._check_deadline(claim)
        try:
            await self.kv.delete(layout.lease_key(claim.task_id), last=revision)
        except jx.APIError as exc:
            if exc.err_code in _WRONG_LAST:
                raise LeaseLostError(claim.task_id, "another delivery holds the task now") from None
            raise

    @staticmethod
    def _check_deadline(claim: Claim) -> None:
        if time.time() > claim.deadline - LEASE_MARGIN:
            raise LeaseLostError(claim.task_id, "its lease ran out")

    def _router_or_fail(self) -> PullRouter:
        if self._router is None:
            raise BackendNotOpenError(f"NATS ({self.where})")
        return self._router

    def _unavailable(self, exc: BaseException) -> BackendUnavailableError:
        detail = str(exc) or type(exc).__name__
        return BackendUnavailableError(
            f"NATS at {self.where} is unavailable ({detail}); check that the server runs with "
            "JetStream (-js) and is reachable, and the URL's host, port, TLS settings and "
            "credentials. The engine retries by itself."
        )


async def _unavailable_as_error(backend: NatsBackend, call: Awaitable[_T]) -> _T:
    try:
        return await call
    except _UNAVAILABLE as exc:
        raise backend._unavailable(exc) from None


def _record(task: Task, limit: int) -> bytes:
    """The encoded record, or `PayloadTooLargeError` if the server could not take it."""
    data = encode_task(task)
    if len(data) > limit:
        raise PayloadTooLargeError(f"the record of task {task.id} (body and step results)", len(data), limit)
    return data


def _receipt(claim: Claim) -> tuple[int, str]:
    """The lease entry's revision and the delivery's ack subject, from a claim's receipt."""
    revision, _, reply = claim.receipt.partition(" ")
    try:
        return int(revision), reply
    except ValueError:
        raise LeaseLostError(claim.task_id, f"receipt {claim.receipt!r} is not a NATS lease") from None


def _nak(delay: float) -> bytes:
    """`-NAK` with a delay: the server hands the message back `delay` seconds from now."""
    return b"-NAK " + json.dumps({"delay": max(1, int(delay * 1e9))}).encode()


def _lease_value(reply: str, lease: float) -> bytes:
    """A lease entry: the delivery's reply subject, the lease it was granted, and when."""
    return f"{reply} {lease:.3f} {time.time():.3f}".encode()
