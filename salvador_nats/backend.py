"""`nats://` and `tls://`: task records in a JetStream KV bucket, delivery through a
work-queue stream.

The layout (subjects, consumers, keys) is in `layout.py`; docs/backends/nats.md explains it
with the settings. How each guarantee is kept:

- **Fence.** A task's record is `t.<id>` once anything wrote it after the submit, else the
  submitted `s.<id>`, which is never written again. Every write goes to `t.<id>`: a KV
  `create` when it has no entry yet (version 1 is then the submitted record), else an
  update with "expected last revision = the revision at which the version it replaces was
  read". Either lands only if nobody wrote since, and the revision and the `version` change
  together. The revision of the last record this process read or wrote is cached, so a
  checkpoint is one round trip.
- **Submit** is two writes, made crash-safe by their order (publish first): the message,
  which carries the submitted record (`Nats-Msg-Id` `<id>.1`: a repeated publish is
  absorbed), and then `s.<id>`. So the first delivery of a submit's message is claimed
  without a read: the worker's ownership write is a `create` of `t.<id>`, which fails if
  anything wrote the task since (cancelled, claimed through another message, deleted), and
  the run then stops before its first step as after any refused write. A crash between the
  two writes leaves a message whose record is in its body: it runs. A crash before the
  publish leaves at most an idempotency-key entry, which the next submit with that key
  adopts. Nothing is ever stored without being queued, and no scan is needed to find out.
- **Requeue** publishes first too (header `Salvador-Version`: the version it will write;
  a claimer that finds an older record waits for the write) and deletes its message again
  if the fenced write is refused; its write names no holder, which voids every claim from
  before it.
- **Leases.** A delivery's lease is the consumer's AckWait (or `nak(delay=lease)`, which
  sets a delivered message's timer, when a claim asks for another length), renewed by
  `in_progress()`; its end is decided by the server's clock alone, by redelivering the
  message. The server accepts a late ack from a delivery that is no longer current
  (nats-server issue 4786), so the record names the delivery holding its task: every write
  a holder makes (taking ownership, each checkpoint, the final write) carries its ack
  subject in the header `Salvador-Lease`, at no extra cost. A claim is current while its
  deadline (measured from before the pull request, so never later than the server's) has
  not passed and the record is unchanged since the claim read it, names this delivery, or
  names an earlier delivery of the same message. `extend` checks that; `ack` and `release`
  also end the lease with a compare-and-set rewrite naming nobody, so a second one fails.
  The revision, not the ack, decides whose writes count: `settle` acks only after its
  fenced write passed.
- **Second messages.** A task may have two messages (a crashed producer's and its retry's).
  A delivery whose record is running under another message's delivery waits (`-NAK` with
  a delay): if that holder dies, its own message comes back and takes over.
- **Claims wait** in a pull request with an expiry (`pulls.py`), never in a sleep loop; a
  batch of claims is one pull, and one read per delivery that is not a submit's first
  (`claims.py`).
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
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, ParamSpec, TypeVar, cast

from nats import errors as nx
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js import errors as jx
from nats.js.kv import KeyValue

from salvador_core.durability import Finding
from salvador_core.errors import (
    BackendNotOpenError,
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    CorruptRecordError,
    LeaseLostError,
    PayloadTooLargeError,
)
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
from salvador_nats.claims import Claimer
from salvador_nats.connection import NatsSettings, provision
from salvador_nats.delays import Promoter
from salvador_nats.durability import nats_findings
from salvador_nats.pulls import Inbox, api_next, publish
from salvador_nats.records import Published, Records, Stored

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

#: How many tasks' cached revisions (and claims held) a process keeps at most.
CACHE_LIMIT = 100_000

#: Pauses (seconds) between the looks a message's first delivery takes at a record that is
#: not there yet, before it is nak'ed: the publisher's record write is usually in flight.
FIRST_LOOK_PAUSES = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)

#: AckWait of the delayed-subject consumers (how soon a promoter that died mid-batch is
#: replaced); the ready consumer's AckWait is the lease of the claim that creates it.
DELAY_ACK_WAIT = 30.0

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


def _guarded(fn: Callable[_P, Coroutine[Any, Any, _T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Driver errors become salvador's: `BackendUnavailableError` naming the redacted URL for
    an unreachable server, one without JetStream, or one out of resources."""

    @functools.wraps(fn)
    async def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except jx.APIError as exc:
            backend = cast(NatsBackend, args[0])
            code, err_code = getattr(exc, "code", None), getattr(exc, "err_code", None)
            if code in (503, 500) or err_code == 10023:  # no JetStream / no resources
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
    claimer: Claimer


class _Known(NamedTuple):
    """The last record of a task this process read or wrote: its version, revision, and
    the delivery it names as holder ("" for none)."""

    version: int
    revision: int
    lease: str


@dataclass
class _Held:
    """This process's newest claim on a task: its delivery's ack subject and deadline, and
    the record bytes and revision of this process's last write under it (or of the read
    that made the claim), for ending the lease without reading the record again."""

    reply: str
    deadline: float
    data: bytes | None
    revision: int


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
        self._inbox: Inbox | None = None
        self._records: Records | None = None
        self._queues: dict[str, _Queue] = {}
        self._queue_lock = asyncio.Lock()
        self._revisions: dict[str, _Known] = {}
        self._held: dict[str, _Held] = {}  # task id -> this process's newest claim on it
        self._connect_errors: builtins.list[Exception] = []  # what the client reported while connecting
        #: Epoch seconds on this process's clock. It only measures this process's own
        #: durations (a claim's deadline, from before its pull request) and a message's age
        #: against its server timestamp; who holds a task is never judged by comparing it
        #: with another machine's clock.
        self.clock: Callable[[], float] = time.time

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
            inbox = Inbox(nc, lambda: self.clock())
            await inbox.start()
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js, self._kv, self._inbox = nc, js, kv, inbox
        self._records = Records(inbox, self.settings.bucket)

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
        """Stop the promoters, send what is still to be sent, close the connection. Safe to
        call twice."""
        if self._nc is None:
            return
        queues, self._queues = self._queues, {}
        for queue in queues.values():
            await queue.promoter.stop()
        nc, self._nc = self._nc, None
        if self._inbox is not None:
            await self._inbox.stop()
        self._inbox = self._records = self._js = self._kv = None
        self._held.clear()
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

    @_guarded
    async def durability_findings(self) -> builtins.list[Finding]:
        """What a crash would lose with this stream, bucket and server: storage, replicas,
        limits, the server's fsync interval (see salvador_nats/durability.py). Used by
        `salvador check` and `Engine.open`."""
        return await nats_findings(self.js, self.nc, self.settings)

    @property
    def records(self) -> Records:
        """Record reads and writes with their headers (for tools and tests)."""
        if self._records is None:
            raise BackendNotOpenError(f"NATS ({self.where})")
        return self._records

    # -- store ---------------------------------------------------------------------------

    @_guarded
    async def create(self, task: Task) -> Task:
        """Insert `task` (version 1): the idempotency-key entry first (`create`: one
        winner), then the submitted record `s.<id>` (`create`). A duplicate returns the
        stored task."""
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
        task = decode_task(found.data, task_id)
        self._remember(task_id, task.version, found.revision, found.lease)
        return task

    @_guarded
    async def update(self, task: Task, expected_version: int) -> Task:
        """Compare-and-set by KV revision (see the module docstring)."""
        stored = task.evolve(version=expected_version + 1, updated_at=utcnow())
        return await self._write(stored, expected_version)

    @_guarded
    async def list(
        self,
        *,
        workflow: str | None = None,
        status: TaskStatus | Iterable[TaskStatus] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Tasks in ascending id order. Reads the key list of the bucket (`t.*`, `s.*`) and then
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
            task: Task | None = decode_task(found.data, task_id)
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
        """Overwrite an unreadable record without a version check (its holder stays named)."""
        stored = task.evolve(version=task.version + 1, updated_at=utcnow())
        known = self._revisions.get(task.id)
        lease = self._lease_for(task.id, known.lease if known is not None else "")
        revision = await self.records.write(
            self._key(task.id), self._encode(stored), expected=None, lease=lease
        )
        self._remember(task.id, stored.version, revision, lease)
        return stored

    # -- queue ---------------------------------------------------------------------------

    @_guarded
    async def enqueue(self, workflow: str, task_id: str, *, not_before: datetime | None = None) -> None:
        """Publish the task's message (`Nats-Msg-Id` `<id>.1`, so a repeat within the
        duplicate window is absorbed); a future `not_before` goes to the delayed subject."""
        await self._publish(workflow, layout.check_task_id(task_id), version=None, not_before=not_before)

    @_guarded
    async def claim(self, workflow: str, *, lease: float, wait: float) -> Claim | None:
        """The next delivery turned into a claim (its record read, in the same round trip's
        worth of work as `claim_many` of one); with none there, the claim waits in a pull
        request with an expiry, up to `wait`. Messages whose record is not (yet) there, or
        whose task another message's delivery holds, are dealt with in `_take`."""
        queue = await self._queue(workflow, lease)
        claims = await queue.claimer.claim_many(1, lease, wait)
        return claims[0] if claims else None

    @_guarded
    async def claim_many(
        self, workflow: str, limit: int, *, lease: float, wait: float
    ) -> builtins.list[Claim]:
        """Up to `limit` claims from one pull request, which asks for exactly `limit`
        deliveries (none is pulled that no slot will run), their records read together;
        waits up to `wait` seconds for the first. Each is what `claim` returns for its task."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number of at least 1, got {limit!r}")
        queue = await self._queue(workflow, lease)
        return await queue.claimer.claim_many(limit, lease, wait)

    @_guarded
    async def extend(self, claim: Claim, *, lease: float) -> Claim:
        """Check that `claim` is still the lease (its record read), then renew the server's
        AckWait (`+WPI`, or `-NAK` with the lease as delay when it differs from the
        consumer's AckWait)."""
        revision, reply = _receipt(claim)
        self._check_deadline(claim)
        found = await self._current(claim)
        queue = await self._queue(claim.workflow, lease)
        renewed_at = self.clock()
        if abs(queue.ack_wait - lease) < 0.001:
            await self.nc.publish(reply, b"+WPI")
        else:
            await self.nc.publish(reply, _nak(lease))
        held = self._held.get(claim.task_id)
        if held is not None and held.reply == reply:
            held.deadline = renewed_at + lease
        if found is not None:
            revision = found.revision
        receipt = f"{revision} {reply}"
        return Claim(claim.task_id, claim.workflow, receipt, claim.deliveries, renewed_at + lease)

    @_guarded
    async def ack(self, claim: Claim) -> None:
        """End the lease (a compare-and-set rewrite of the record naming no holder), then
        ack the message."""
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
        """Idempotency-key entry, then the message carrying the record, then the record
        (module docstring)."""
        target = await self._reserve_key(task)
        if isinstance(target, Task):
            return target
        adopted = target != task.id
        stored = (task.evolve(id=target) if adopted else task).evolve(version=1)
        data = self._encode(stored)
        # An adopted id's first message may be long gone (run, or dropped) while its
        # Nats-Msg-Id is still in the duplicate window: this publish must not be absorbed
        # as a repeat of it.
        suffix = f".{secrets.token_hex(4)}" if adopted else ""
        await self._publish(
            stored.workflow, stored.id, version=1, not_before=stored.not_before, suffix=suffix,
            record=data,
        )
        return await self._create_record(stored, data)

    @_guarded
    async def requeue(self, task: Task, expected_version: int) -> Task:
        """Publish the new message, then the fenced write naming no holder, which voids any
        lease from before (the message is deleted again if the write is refused)."""
        stored = task.evolve(version=expected_version + 1, updated_at=utcnow())
        ack = await self._publish(stored.workflow, stored.id, version=stored.version,
                                  not_before=stored.not_before)
        try:
            await self._write(stored, expected_version, lease="")  # no holder: claims from before are void
        except ConflictError:
            if not ack.duplicate:
                try:
                    await self.js.delete_msg(self.settings.stream, ack.seq)
                except jx.NotFoundError:
                    pass  # already claimed and dropped (its record never got the version)
            raise
        self._held.pop(stored.id, None)
        return stored

    @_guarded
    async def settle(self, task: Task, expected_version: int, claim: Claim) -> Task:
        """The fenced final write, then the ack. The write passing is what makes the ack
        safe even from a claim whose lease ran out: the task is terminal now, so whoever
        holds the message next finds it so and acks it. The ack is not waited for: if it is
        lost, the message comes back and its next holder acks the terminal task."""
        _, reply = _receipt(claim)
        stored = await self._write(
            task.evolve(version=expected_version + 1, updated_at=utcnow()), expected_version, lease=reply
        )
        await publish(self.nc, reply, b"+ACK", "", None)
        self._forget_claim(claim)
        return stored

    # -- internals: records ---------------------------------------------------------------

    async def _read(self, task_id: str) -> Stored | None:
        """The record (bytes, the revision the next write must expect, holder), or None if
        there is none (never submitted, deleted or purged)."""
        found = await self._lookup(task_id)
        return None if found is None or found.gone else found

    async def _lookup(self, task_id: str) -> Stored | None:
        """The task's record: `t.<id>` once written, else the submitted `s.<id>` with
        revision 0 (the next write creates `t.<id>`). A delete marker on `t.<id>` hides
        `s.<id>` (the task was deleted or purged) and is returned as such (`gone`), unless
        `s.<id>` was submitted again since; then its revision is the marker's, which a create
        of `t.<id>` must expect. None when neither was ever written."""
        records = self.records
        found = await records.read(self._key(task_id))
        if found is not None and not found.gone:
            return found
        submitted = await records.read(layout.submitted_key(task_id))
        if submitted is None or submitted.gone:
            return found
        return Stored(submitted.data, found.revision if found is not None else 0)

    async def _readable(self, task_id: str) -> Task | None:
        """The decoded task, or None for a missing, corrupt or newer-format record."""
        found = await self._read(task_id)
        if found is None:
            return None
        try:
            return decode_task(found.data, task_id)
        except (CorruptRecordError, RecordVersionError):
            return None

    async def _record_ids(self) -> builtins.list[str]:
        """Every task id in the bucket, sorted: the last entry per `t.*` and `s.*` key,
        headers only. A task is listed if its `t.*` entry is not a delete marker, or (when
        it has none, or a marker from a previous task of that id) its `s.*` entry is there.

        Not `kv.keys()`/`kv.watch()`: nats-py decides "no keys" from the consumer's
        `num_pending` (0 once the server has sent everything) and the messages its callback
        has handled so far (0 while they sit in the client's buffer), so now and then it
        reports an empty bucket that is not (nats-py issue 842; about 1 listing in 500
        here). The server's own count of what it delivered decides instead, and the listing
        reads until the message that says nothing more is pending. (A set: the ordered
        consumer restarts after a missed heartbeat on a busy server and may hand out some
        keys again.)"""
        bucket = f"KV_{self.settings.bucket}"
        prefix = f"$KV.{self.settings.bucket}."
        sub = await self.js.subscribe(
            f"{prefix}*.*", stream=bucket, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT, headers_only=True, inactive_threshold=60.0,
        )
        written: dict[str, bool] = {}  # id -> whether its t.* entry is a live record
        submitted: set[str] = set()
        try:
            info = await sub.consumer_info()
            if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
                return []
            while True:
                msg = await sub.next_msg(timeout=10.0)
                headers = msg.headers or {}
                gone = headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers
                kind, task_id = msg.subject[len(prefix)], msg.subject[len(prefix) + 2 :]
                if kind == "t":
                    written[task_id] = not gone
                elif kind == "s" and not gone:
                    submitted.add(task_id)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return sorted({i for i, live in written.items() if live} | submitted)

    async def _create_record(self, stored: Task, data: bytes | None = None) -> Task:
        """Create the submitted record `s.<id>` (one winner); a task already stored under
        that id is returned instead."""
        key = layout.submitted_key(layout.check_task_id(stored.id))
        data = data if data is not None else self._encode(stored)
        try:
            await self.records.write(key, data, expected=0)
        except jx.KeyWrongLastSequenceError:
            existing = await self.get(stored.id)
            if existing is not None:
                return existing
            # A marker left by a purge: a create may take the key over from it.
            found = await self.records.read(key)
            await self.records.write(key, data, expected=found.revision if found is not None else 0)
        # The next write creates t.<id>; if a marker of an earlier task of this id is
        # there, that create fails and the writer reads the record (the marker's revision).
        self._remember(stored.id, 1, 0, "")
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

    async def _write(self, stored: Task, expected_version: int, *, lease: str | None = None) -> Task:
        """Write `stored` if the record is still at `expected_version` (by KV revision),
        naming `lease` as its holder (None: this process's claim on the task if it holds
        one, else the holder the record names now; "": nobody)."""
        key = self._key(stored.id)
        data = self._encode(stored)
        known = self._revisions.get(stored.id)
        # A claim taken from a submit's message had not read the record: if `t.<id>` turns
        # out to hold version 1 after all, the write may go on only if that is the record
        # the claim was taken from (a released claim's copy), not one written otherwise.
        held = self._held.get(stored.id)
        unread = None
        if held is not None and held.revision == 0 and known is not None and known.revision == 0:
            unread = held.data
        for _ in range(3):
            if known is None or known.version != expected_version:
                found = await self._read(stored.id)
                if found is None:
                    raise self._conflict(stored.id, expected_version, None)
                try:
                    version = decode_task(found.data, stored.id).version
                except (CorruptRecordError, RecordVersionError):
                    raise self._conflict(stored.id, expected_version, None) from None
                other = unread is not None and found.revision != 0 and found.data != unread
                if version != expected_version or other:
                    raise self._conflict(stored.id, expected_version, version)
                known = _Known(version, found.revision, found.lease)
            holder = self._lease_for(stored.id, known.lease) if lease is None else lease
            try:
                revision = await self.records.write(key, data, expected=known.revision, lease=holder)
            except jx.KeyWrongLastSequenceError:
                known = None  # someone wrote since we read: look again
                continue
            self._remember(stored.id, stored.version, revision, holder)
            held = self._held.get(stored.id)
            if held is not None and held.reply == holder:
                held.data, held.revision = data, revision
            return stored
        raise self._conflict(stored.id, expected_version, None)

    def _conflict(self, task_id: str, expected: int, actual: int | None) -> ConflictError:
        """The error for a refused write. This process's claim on the task no longer
        names the holder of later writes: a run that lost the race for ownership must not
        put its delivery into the winner's record through a later write of this process."""
        self._held.pop(task_id, None)
        return ConflictError(task_id, expected, actual)

    def _lease_for(self, task_id: str, current: str) -> str:
        """The holder a write of `task_id` names: this process's newest claim on it, if
        it holds one, else the holder the record names now (`current`)."""
        held = self._held.get(task_id)
        return held.reply if held is not None else current

    def _key(self, task_id: str) -> str:
        """The KV key of `task_id`'s record; ValueError for an id that cannot be one. The
        ids in `_revisions` passed that check when their record was read or written."""
        if task_id not in self._revisions:
            layout.check_task_id(task_id)
        return layout.record_key(task_id)

    def _encode(self, task: Task) -> bytes:
        # Room for the KV subject and headers within the server's max_payload.
        return _record(task, self.nc.max_payload - 1024)

    def _remember(self, task_id: str, version: int, revision: int, lease: str) -> None:
        cache = self._revisions
        if len(cache) >= CACHE_LIMIT and task_id not in cache:
            del cache[next(iter(cache))]  # the oldest entry
        cache[task_id] = _Known(version, revision, lease)
        held = self._held.get(task_id)
        if held is not None and held.revision != revision:
            held.data = None  # the record moved on: ending the lease reads it first

    async def _forget(self, task_id: str, task: Task | None) -> None:
        """Purge a task's records and (if it still points here) its idempotency key. The
        submitted record goes first and without a trace; `t.<id>` is purged last and keeps
        a marker, which hides the task from a message of it still queued (its claim's
        `create` of `t.<id>` fails) and from a crash between the two."""
        kv = self.kv
        if task is not None and task.idempotency_key is not None:
            key = layout.idempotency_key(task.workflow, task.idempotency_key)
            try:
                entry = await kv.get(key)
                if (entry.value or b"").decode() == task_id:
                    await kv.purge(key)
            except jx.KeyNotFoundError:
                pass
        bucket = self.settings.bucket
        await self.js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{layout.submitted_key(task_id)}")
        await kv.purge(layout.record_key(task_id))
        self._revisions.pop(task_id, None)
        self._held.pop(task_id, None)

    # -- internals: queue -----------------------------------------------------------------

    async def _publish(
        self, workflow: str, task_id: str, *, version: int | None, not_before: datetime | None,
        suffix: str = "", record: bytes | None = None,
    ) -> Published:
        """Publish a task's message: to the ready subject, or with a future `not_before`
        to the delayed one. `version` (the record version it is for) goes in a header; a
        submit's `record` goes in the body after the id."""
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
        body = task_id.encode() if record is None else task_id.encode() + b"\n" + record
        return await self.records.publish(subject, body, headers)

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
                self.js, self._inbox_or_fail(), stream=stream, consumer=delayed_name,
                ready=layout.ready_subject(stream, workflow),
            )
            await promoter.start()
            ack_wait = float(ready.config.ack_wait or lease)
            claimer = Claimer(
                self._inbox_or_fail(), api_next(stream, ready.name),
                take=functools.partial(self._take, workflow, ack_wait),
                take_now=functools.partial(self._take_unread, workflow, ack_wait),
                drop=self._forget_claim,
            )
            queue = _Queue(workflow, ack_wait, promoter, claimer)
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
        """Turn a delivered message into a claim, or deal with it and return None (the
        claimer asks `_take_unread` first, and this only where that had no claim):

        - a message in a format this version does not know is left for a newer worker;
        - the first delivery of a submit's message is claimed from the record in its body,
          without a read (`_submitted`); a later one reads the record, and if there is none
          at all (its producer died before writing it) runs from the body too, unless the
          task was deleted;
        - a message whose record is missing, or older than the version it was published
          for, is looked at again within `FIRST_LOOK_PAUSES` on its first delivery (the
          writer is usually a moment behind), then waits for the writer and is dropped
          once `publish_grace` is over on the server's clock (`_wait_for_writer`);
        - a message whose task a delivery of another message holds waits (`nak` with the
          lease as delay) until that holder is done: run beside it, the second run would
          take the first's `running` record for a lost worker's;
        - a stale delivery is left alone: one whose message has been delivered again since
          (the record or this process names a later delivery of it), or whose lease ran
          out before it could be taken (it sat in the buffers of a paused process). The
          server has redelivered it or will; an ack or nak from it would act on a newer
          delivery's message.
        """
        form = (msg.headers or {}).get(layout.HEADER_FORMAT, layout.MESSAGE_FORMAT)
        if form != layout.MESSAGE_FORMAT:
            log.warning(
                "a message of workflow %r is in format %r, newer than this salvador's (%s): left "
                "for a worker that knows it (upgrade salvador on this worker)",
                workflow, form, layout.MESSAGE_FORMAT,
            )
            await self.nc.publish(msg.reply, _nak(lease))
            return None
        head, _, record = msg.data.partition(b"\n")
        task_id = head.decode(errors="replace")
        if not layout.TASK_ID.match(task_id):
            await self.nc.publish(msg.reply, b"+ACK")  # not ours to run: no such task can exist
            return None
        seq, deliveries = layout.delivery_of(msg.reply)  # what msg.metadata says, without its datetime
        if not deliveries:
            deliveries = msg.metadata.num_delivered
        version = msg.headers.get(layout.HEADER_VERSION) if msg.headers else None
        published_for = int(version) if version is not None else None
        fresh = record and published_for == 1 and deliveries == 1
        submitted = self._submitted(task_id, record) if fresh else None
        found: Stored | None
        task: Task | None
        if submitted is not None:
            found, task = submitted
        elif record and published_for == 1:
            found = await self._lookup(task_id)
            if found is None:
                submitted = self._submitted(task_id, record)  # its producer died before s.<id>
            elif found.gone:
                await self.nc.publish(msg.reply, b"+ACK")  # deleted or purged
                return None
            found, task = submitted if submitted is not None else self._decoded(task_id, found, published_for)
        else:
            found, task = await self._record_for(task_id, published_for)
        if found is None and published_for is not None and deliveries == 1 and not record:
            # Delivered before its publisher's record write landed (publish comes first):
            # that write is most likely in flight, so look again shortly rather than nak.
            for pause in FIRST_LOOK_PAUSES:
                await asyncio.sleep(pause)
                found, task = await self._record_for(task_id, published_for)
                if found is not None:
                    break
        if found is None:
            await self._wait_for_writer(msg, published_for)
            return None
        deadline = sent_at + lease
        if self._superseded(task_id, found, msg.reply) or self.clock() > deadline - LEASE_MARGIN:
            return None
        if self._held_by_another_message(task_id, task, found, seq):
            await self.nc.publish(msg.reply, _nak(lease))  # back once that holder's lease could be over
            return None
        if abs(ack_wait - lease) >= 0.001:
            await self.nc.publish(msg.reply, _nak(lease))  # this delivery's timer: `lease`
        self._hold(task_id, _Held(msg.reply, deadline, found.data, found.revision))
        return Claim(task_id, workflow, f"{found.revision} {msg.reply}", deliveries, deadline, task)

    def _take_unread(
        self, workflow: str, ack_wait: float, msg: Msg, lease: float, sent_at: float
    ) -> Claim | None:
        """`_take`'s claim of a submit's first delivery, made here and now, with no read and
        nothing sent; None wherever `_take` has more to do (any other message, a stale
        delivery, a task held through another message, a lease that needs its own timer).
        Most deliveries of a busy queue are such first deliveries: taking them without a
        coroutine of their own is what `Claimer` asks this for."""
        head, _, record = msg.data.partition(b"\n")
        if not record or abs(ack_wait - lease) >= 0.001:
            return None
        headers = msg.headers
        if headers is None or headers.get(layout.HEADER_VERSION) != "1" or layout.HEADER_FORMAT in headers:
            return None
        deliveries = layout.delivery_of(msg.reply)[1]
        task_id = head.decode(errors="replace")
        if deliveries != 1 or not layout.TASK_ID.match(task_id):
            return None
        deadline = sent_at + lease
        local = self._held.get(task_id)
        if local is not None or self.clock() > deadline - LEASE_MARGIN:
            return None
        submitted = self._submitted(task_id, record)
        if submitted is None:
            return None
        found, task = submitted
        self._hold(task_id, _Held(msg.reply, deadline, found.data, 0))
        return Claim(task_id, workflow, f"0 {msg.reply}", 1, deadline, task)

    def _submitted(self, task_id: str, record: bytes) -> tuple[Stored, Task] | None:
        """The record a submit's message carries (version 1) as the claim's record, at
        revision 0: `t.<id>` not written yet. Taken on trust: the ownership write, a
        `create` of `t.<id>`, fails if anything wrote the task since. None (the record is
        read instead) if this process has seen `t.<id>` written, or the body does not decode
        to this task's version 1."""
        known = self._revisions.get(task_id)
        if known is not None and (known.version != 1 or known.revision != 0):
            return None
        try:
            task = decode_task(record, task_id)
        except (CorruptRecordError, RecordVersionError):
            return None
        if task.id != task_id or task.version != 1:
            return None
        if known is None:
            self._remember(task_id, 1, 0, "")
        return Stored(record, 0), task

    async def _record_for(self, task_id: str, published_for: int | None) -> tuple[Stored | None, Task | None]:
        """The record of a delivered task and the task in it (None if it cannot be decoded:
        the engine dead-letters or leaves it); (None, None) while the record is missing or
        older than the version the message was `published_for`."""
        return self._decoded(task_id, await self._read(task_id), published_for)

    def _decoded(
        self, task_id: str, found: Stored | None, published_for: int | None
    ) -> tuple[Stored | None, Task | None]:
        """`_record_for` of a record read already."""
        if found is None:
            return None, None
        try:
            task = decode_task(found.data, task_id)
        except (CorruptRecordError, RecordVersionError):
            return found, None
        self._remember(task_id, task.version, found.revision, found.lease)
        if published_for is not None and task.version < published_for:
            return None, None
        return found, task

    async def _wait_for_writer(self, msg: Msg, published_for: int | None) -> None:
        """A message whose record is not there yet: `nak` it with a short, growing delay
        while it is younger than `publish_grace` (its publisher may still be writing), and
        drop it after that (its publisher crashed before writing; that call never returned).

        Its age is judged on the server's clock: the nak delays it has already served before
        this delivery (`_served`, timed by the server) must add up to the grace. A claimer
        whose clock runs ahead would otherwise drop every message whose record is a moment
        late, and lose the task. Its own clock must agree as well (against the message's
        server timestamp), in case a delivery was handed back without a delay."""
        meta = msg.metadata
        grace = self.settings.publish_grace
        served = _served(meta.num_delivered, grace)
        age = self.clock() - meta.timestamp.timestamp()
        if published_for is None or (served >= grace and age >= grace):
            await self.nc.publish(msg.reply, b"+ACK")
            return
        left = grace - served if served < grace else grace - age
        await self.nc.publish(msg.reply, _nak(_backoff(meta.num_delivered, left)))

    def _held_by_another_message(self, task_id: str, task: Task | None, found: Stored, seq: int) -> bool:
        """Whether a delivery of another message of this task (not of the message at stream
        sequence `seq`) holds it: the record is running (or compensating) under such a
        delivery, or this process holds a live claim on it from another message. A later
        delivery of the *same* message takes over: the server redelivered it, so the earlier
        delivery's lease is over on the server's clock. No clock of any worker is compared
        with another's."""
        if (
            task is not None
            and task.status in (TaskStatus.RUNNING, TaskStatus.COMPENSATING)
            and found.lease
            and layout.delivery_of(found.lease)[0] != seq
        ):
            return True
        local = self._held.get(task_id)
        return (
            local is not None and local.deadline > self.clock() and layout.delivery_of(local.reply)[0] != seq
        )

    def _superseded(self, task_id: str, found: Stored, reply: str) -> bool:
        """Whether a later delivery of this delivery's message is known (named by the
        record, or held by this process): this one is stale."""
        if found.lease and found.lease != reply and _holds(found.lease, reply):
            return True
        local = self._held.get(task_id)
        return local is not None and local.reply != reply and _holds(local.reply, reply)

    def _hold(self, task_id: str, held: _Held) -> None:
        if len(self._held) >= CACHE_LIMIT and task_id not in self._held:
            del self._held[next(iter(self._held))]  # the oldest: a claim long given up
        self._held[task_id] = held

    def _forget_claim(self, claim: Claim) -> None:
        """This process no longer holds `claim` (if it was its newest on the task)."""
        held = self._held.get(claim.task_id)
        if held is not None and held.reply == _receipt(claim)[1]:
            del self._held[claim.task_id]

    async def _current(self, claim: Claim) -> Stored | None:
        """The record, if `claim` is still the lease on its task, else `LeaseLostError`:
        current while the record is unchanged since the claim read it, names the claim's
        delivery, or names an earlier delivery of the same message. None when the record
        is gone (nothing is left to hold)."""
        revision, reply = _receipt(claim)
        found = await self._read(claim.task_id)
        if found is None:
            return None
        if found.revision == revision or _holds(reply, found.lease):
            return found
        self._forget_claim(claim)
        raise LeaseLostError(claim.task_id, "another delivery holds the task now, or it was requeued")

    async def _end_lease(self, claim: Claim) -> None:
        """End `claim`'s lease: rewrite its record, compare-and-set, naming no holder, so
        any later `ack`, `extend` or `release` of it fails; `LeaseLostError` if it is no
        longer the lease. After this process's own write under the claim, no read is needed."""
        self._check_deadline(claim)
        key = self._key(claim.task_id)
        held = self._held.get(claim.task_id)
        if held is not None and held.reply == _receipt(claim)[1] and held.data is not None:
            try:
                revision = await self.records.write(key, held.data, expected=held.revision)
            except jx.KeyWrongLastSequenceError:
                pass  # written since: look at the record
            else:
                self._lease_ended(claim, held.revision, revision)
                return
        for _ in range(3):
            found = await self._current(claim)
            if found is None:
                self._forget_claim(claim)
                return
            try:
                revision = await self.records.write(key, found.data, expected=found.revision)
            except jx.KeyWrongLastSequenceError:
                continue  # written meanwhile (a cancel request?): check again
            self._lease_ended(claim, found.revision, revision)
            return
        raise LeaseLostError(claim.task_id, "its record kept changing while the lease was being ended")

    def _lease_ended(self, claim: Claim, before: int, revision: int) -> None:
        known = self._revisions.get(claim.task_id)
        if known is not None and known.revision == before:
            self._remember(claim.task_id, known.version, revision, "")
        else:
            self._revisions.pop(claim.task_id, None)
        self._forget_claim(claim)

    def _check_deadline(self, claim: Claim) -> None:
        if self.clock() > claim.deadline - LEASE_MARGIN:
            self._forget_claim(claim)
            raise LeaseLostError(claim.task_id, "its lease ran out")

    def _inbox_or_fail(self) -> Inbox:
        if self._inbox is None:
            raise BackendNotOpenError(f"NATS ({self.where})")
        return self._inbox

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
    """The record's revision when the claim was made (or last extended) and the delivery's
    ack subject, from a claim's receipt."""
    revision, _, reply = claim.receipt.partition(" ")
    try:
        return int(revision), reply
    except ValueError:
        raise LeaseLostError(claim.task_id, f"receipt {claim.receipt!r} is not a NATS lease") from None


def _nak(delay: float) -> bytes:
    """`-NAK` with a delay: the server hands the message back `delay` seconds from now."""
    return b"-NAK " + json.dumps({"delay": max(1, int(delay * 1e9))}).encode()


def _backoff(delivery: int, left: float) -> float:
    """The nak delay of a message waiting for its record, at its `delivery`-th delivery:
    growing from 50 ms, at most 12.8 s, and no longer than the grace `left` (at least 10 ms)."""
    return max(0.01, min(0.05 * 2.0 ** min(delivery - 1, 8), left))


def _served(deliveries: int, grace: float) -> float:
    """Seconds, on the server's clock, a message waiting for its record has at least been
    held back before its delivery number `deliveries`: the nak delays of the ones before."""
    served = 0.0
    for delivery in range(1, deliveries):
        if served >= grace:
            break
        served += _backoff(delivery, grace - served)
    return served


def _holds(reply: str, holder: str) -> bool:
    """Whether the delivery `reply` holds a task whose record names `holder`: it is that
    delivery, or a later delivery of the same message (the server redelivered the message,
    so the earlier delivery's lease is over)."""
    if holder == reply:
        return True
    if not holder:
        return False
    seq, count = layout.delivery_of(reply)
    held_seq, held_count = layout.delivery_of(holder)
    return seq != 0 and seq == held_seq and count > held_count
