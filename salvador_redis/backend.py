"""`redis://` and `rediss://`: task records and delivery on Redis or Redis Cluster.

Every multi-key transition (submit, claim, fenced update, settle, release, requeue, the
reaper) is one Lua script in `salvador_redis/scripts/`, so it is atomic and costs one round
trip. All keys of a workflow share the hash tag `{<prefix><workflow>}` (the name
percent-encoded, so no name can close the tag or collide with another), which keeps each
script on one Cluster slot. Leases and due times are read from the Redis clock (`TIME`).

Only two keys live outside the workflows' slots: the id -> workflow index (for `get(id)`
and `delete(id)`, which are not told the workflow) and the set of workflow names (for
listing). On a single server the submit script writes them too, so a submit is all or
nothing (a full server refuses it whole). On Redis Cluster they are written *before* the
submit script, so a crash between leaves an index entry without a record, which reads as
"no such task". See docs/backends/redis.md.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import hashlib
import heapq
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import quote, unquote, urlsplit

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from salvador_core.config import UrlOptions, redact_url
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
    DEAD_LETTER_STATUSES,
    Claim,
    Page,
    RecordVersionError,
    Task,
    TaskStatus,
    WorkflowStats,
    decode_task,
    encode_task,
    next_version,
    purge_statuses,
    statuses_of,
    utcnow,
)
from salvador_redis.multiplex import Multiplexer

__all__ = ["RedisBackend"]

log = logging.getLogger("salvador.redis")

#: The ACL permissions the backend needs (besides `~<prefix>*` for its keys); `+info` is
#: optional (the start-up check of the eviction policy).
ACL_RULES = "+@read +@write +@blocking +@connection +evalsha +script|load +time +info"

DEFAULT_PREFIX = "salvador:"

#: Redis refuses strings over 512 MiB (`proto-max-bulk-len`); a record holds the body in
#: base64 (4/3 larger) beside the step results, so one payload may use half of that.
REDIS_STRING_LIMIT = 512 * 1024 * 1024
MAX_PAYLOAD_BYTES = REDIS_STRING_LIMIT // 2

#: The URL query options (and `from_url` keyword options) this backend understands.
_OPTIONS = frozenset({
    "prefix", "retention", "cluster", "socket_timeout", "socket_connect_timeout", "max_connections",
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
})
_TLS_OPTIONS = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"})
#: Every status, in the order of STATUSES in common.lua (the stats script's reply).
_ALL_STATUSES = tuple(TaskStatus)
_TERMINAL = tuple(s for s in TaskStatus if s.terminal)
#: How many ready ids, from the claiming end, `stats` looks through for a pending one (the
#: queue's head, whose wait it reports); tasks cancelled or finished while still queued
#: wait there until a claim skips them.
_HEAD_LOOKUP = 1000

#: Errors that mean "the server cannot be reached or cannot serve us right now".
_UNAVAILABLE = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.ClusterError,
    rx.ReadOnlyError,
    rx.TryAgainError,
    OSError,
    asyncio.TimeoutError,
)

_P = ParamSpec("_P")
_T = TypeVar("_T")
RedisClient = aioredis.Redis | RedisCluster


def _guarded(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """Turn driver connection errors into `BackendUnavailableError` naming the (redacted)
    server, and missing ACL permissions into `ConfigurationError`."""

    @functools.wraps(fn)
    async def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except rx.AuthenticationError as exc:
            backend = cast(RedisBackend, args[0])
            raise ConfigurationError(
                f"Redis at {backend.where} refused the credentials ({exc}); check the URL's "
                "user name and password (redis://user:password@host:6379/0)."
            ) from None
        except rx.OutOfMemoryError as exc:
            backend = cast(RedisBackend, args[0])
            raise BackendUnavailableError(
                f"Redis at {backend.where} is out of memory ({exc}); nothing was written. Raise "
                "`maxmemory`, purge or set a retention for finished tasks."
            ) from None
        except rx.ResponseError as exc:
            # NOPERM for a direct command; inside a script Redis reports it in plain words.
            if not isinstance(exc, rx.NoPermissionError) and "can't run this command" not in str(exc):
                raise
            backend = cast(RedisBackend, args[0])
            raise ConfigurationError(
                f"Redis at {backend.where} refused a command ({exc}); the ACL user needs "
                f"{ACL_RULES} on keys '{backend.prefix}*'."
            ) from None
        except _UNAVAILABLE as exc:
            backend = cast(RedisBackend, args[0])
            raise backend._unavailable(exc) from exc

    return guarded


@dataclass(frozen=True)
class _Settings:
    """Where and how to connect, parsed from a URL. Never shows the password."""

    where: str  # the redacted URL, for messages
    host: str
    port: int
    db: int
    username: str | None
    password: str | None = field(repr=False)
    tls: bool
    cluster: bool
    socket_timeout: float
    socket_connect_timeout: float
    max_connections: int
    tls_options: dict[str, Any]

    def client(self) -> RedisClient:
        common: dict[str, Any] = {
            "username": self.username,
            "password": self.password,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
            "socket_keepalive": True,
            # Reconnect on a dropped connection, but give up fast: the engine backs off
            # and retries on its own, and a refused connection should be reported now.
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            "decode_responses": False,
        }
        if self.cluster:
            if self.tls:
                common.update(ssl=True, **self.tls_options)
            return RedisCluster(
                host=self.host, port=self.port, max_connections=self.max_connections, **common
            )
        # A blocking pool: past `max_connections`, callers wait for a free connection
        # instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool(
            connection_class=aioredis.SSLConnection if self.tls else aioredis.Connection,
            max_connections=self.max_connections,
            timeout=self.socket_timeout,
            host=self.host,
            port=self.port,
            db=self.db,
            **common,
            **(self.tls_options if self.tls else {}),
        )
        return aioredis.Redis.from_pool(pool)


class RedisBackend:
    """Task store and queue on Redis: `redis://[user:password@]host:6379/0?prefix=app:`.

    Build it with `RedisBackend.from_url(url, **options)` or around a client you already
    have: `RedisBackend(client=redis.asyncio.Redis(...), prefix="app:")` (a
    `redis.asyncio.RedisCluster` works too; the client must not decode responses, and
    stays yours to close). `prefix` isolates tenants sharing a server. `retention`
    (seconds) gives finished tasks a TTL; without it they stay until purged.
    """

    #: Redis strings hold 512 MiB; see MAX_PAYLOAD_BYTES.
    max_payload_bytes: int | None = MAX_PAYLOAD_BYTES

    #: Seconds an id may sit in a workflow's processing list without a lease before the
    #: reaper returns it to ready. Only a blocking claim whose reply was lost (the
    #: connection died right after BLMOVE ran) leaves one there; a live claimer adopts
    #: its id within a round trip. A claimer stalled longer than this merely loses the
    #: id to the next claimer, never shares it.
    orphan_grace: float = 10.0

    #: How long one BLMOVE may block at most (the claim loop re-checks in between). Kept
    #: below the socket timeout, which would otherwise cut a legitimate wait short.
    max_block: float = 5.0

    #: How often (seconds) claims of a workflow also clean up after expired records, when
    #: `retention` is set.
    sweep_interval: float = 60.0

    def __init__(
        self,
        client: RedisClient | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        retention: float | None = None,
    ) -> None:
        self.prefix = _checked_prefix(prefix)
        self.retention = _checked_retention(retention)
        self._retention_ms = 0 if self.retention is None else max(1, int(self.retention * 1000))
        self._settings: _Settings | None = None
        self._given = client
        self._client: RedisClient | None = client
        self.where = "the given Redis client" if client is not None else "redis://localhost:6379/0"
        if client is not None:
            if _decodes_responses(client):
                raise ConfigurationError(
                    "RedisBackend needs a client created with decode_responses=False "
                    "(records are bytes)."
                )
            timeout = _socket_timeout(client)
            if timeout:
                self.max_block = min(self.max_block, max(timeout / 2, 0.05))
        self._ids_key = self.prefix + "ids"
        self._workflows_key = self.prefix + "workflows"
        self._bases: dict[str, str] = {}
        self._workflow_of: dict[str, str] = {}  # task id -> workflow, in-process cache
        self._next_sweep: dict[str, float] = {}
        self._mux: Multiplexer | None = None
        self._open = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBackend:
        """An unopened backend for `url`. Options (as URL query or keyword arguments):
        `prefix`, `retention` (seconds), `cluster` (true: Redis Cluster), `socket_timeout`,
        `socket_connect_timeout` (seconds), `max_connections` (per process and server,
        default 256; more callers wait for a free one), and for `rediss://` `ssl_cert_reqs`
        (`required`, `optional`, `none`), `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`."""
        settings, prefix, retention = _parse_url(url, options)
        backend = cls(prefix=prefix, retention=retention)
        backend._settings = settings
        backend.where = settings.where
        backend.max_block = min(backend.max_block, max(settings.socket_timeout / 2, 0.05))
        return backend

    def __repr__(self) -> str:
        return f"RedisBackend({self.where!r}, prefix={self.prefix!r})"

    # -- lifecycle -----------------------------------------------------------------------

    @_guarded
    async def open(self) -> None:
        """Connect and load the scripts (which also proves the server answers and the ACL
        user may run scripts). Safe to call twice."""
        if self._open:
            return
        if self._client is None:
            self._client = (self._settings or _parse_url("redis://localhost:6379/0", {})[0]).client()
        if self._mux is None and not isinstance(self._client, RedisCluster):
            self._mux = _multiplexer(self._client)
        self._open = True
        try:
            await self._load_scripts()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connections this backend opened (a client passed in stays open)."""
        client, self._client = self._client, self._given
        mux, self._mux = self._mux, None
        self._open = False
        if mux is not None:
            await mux.close()
        if client is not None and client is not self._given:
            await client.aclose()

    async def __aenter__(self) -> RedisBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- store ---------------------------------------------------------------------------

    @_guarded
    async def create(self, task: Task) -> Task:
        """Insert `task` (version 1); a duplicate id or idempotency key returns the stored
        task. Atomic in one script, index entries included on a single server (on a cluster
        they are written first: see module docs)."""
        return await self._insert(task, enqueue=False)

    @_guarded
    async def get(self, task_id: str) -> Task | None:
        """The stored task, or None. One round trip when this process knows the task's
        workflow (it submitted or claimed it), two otherwise."""
        workflow = await self._workflow(task_id)
        if workflow is None:
            return None
        data = await self._exec("HGET", self._base(workflow) + "t:" + task_id, "data")
        if data is None:
            return None
        return decode_task(data, task_id)

    @_guarded
    async def update(self, task: Task, expected_version: int) -> Task:
        """Compare-and-set on the record's `version` field, in one script."""
        stored, data = self._encode_write(task, expected_version)
        reply = await self._run(
            "update", task.workflow,
            task.id, expected_version, data, stored.status.value, _ts(stored), self._retention_ms,
        )
        _check_write(reply, task.id, expected_version)
        return stored

    @_guarded
    async def list(
        self,
        *,
        workflow: str | None = None,
        status: TaskStatus | Iterable[TaskStatus] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Tasks in ascending id order, merged across workflows, read from the per-status
        indexes (no JSON is parsed to filter); corrupt records are skipped."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        wanted = statuses_of(status)
        statuses = _ALL_STATUSES if wanted is None else tuple(s for s in _ALL_STATUSES if s in wanted)
        names = [workflow] if workflow is not None else await self._workflow_names()
        sources = [_Listing(name, cursor or "") for name in names]
        await asyncio.gather(*(self._fill(src, statuses, limit + 1) for src in sources))
        found: list[Task] = []
        while len(found) <= limit:
            live = [src for src in sources if src.buffer]
            if not live:
                break
            src = min(live, key=lambda s: s.buffer[0][0])
            task_id, data = heapq.heappop(src.buffer)
            if not src.buffer and not src.done:
                await self._fill(src, statuses, limit + 1 - len(found))
            task = _decoded_or_none(data, task_id)
            if task is not None and (wanted is None or task.status in wanted):
                found.append(task)
        more = len(found) > limit
        page = found[:limit]
        return Page(page, page[-1].id if more else None)

    @_guarded
    async def delete(self, task_id: str) -> bool:
        """Remove the record, its idempotency key and every queue entry; then the index."""
        workflow = await self._workflow(task_id)
        if workflow is None:
            return False
        removed = await self._run("delete", workflow, task_id)
        if removed:
            await self._exec("HDEL", self._ids_key, task_id)
            self._workflow_of.pop(task_id, None)
        return bool(removed)

    @_guarded
    async def purge(self, *, older_than: datetime, statuses: Iterable[TaskStatus]) -> int:
        """Delete terminal tasks last updated before `older_than`, workflow by workflow in
        batches of 500 (each batch one script), and clean up after expired records."""
        wanted = purge_statuses(statuses)
        cutoff = repr(older_than.timestamp())
        total = 0
        for workflow in await self._workflow_names():
            await self._sweep(workflow)
            for status in wanted:
                after = ""
                while True:
                    reply = await self._run("purge", workflow, status.value, cutoff, after, 500)
                    scanned, after = int(reply[0]), _text(reply[1])
                    deleted = [_text(i) for i in reply[2:]]
                    if deleted:
                        await self._forget(deleted)
                        total += len(deleted)
                    if scanned < 500:
                        break
        return total

    @_guarded
    async def stats(self) -> builtins.list[WorkflowStats]:
        """Per workflow: counts by status (the status indexes' sizes), the queue's depth and
        delay (the pending index against `leases` and `delayed`), the wait of the queue's
        head, and completions per minute (counters the scripts keep) (TaskCounts). Two
        scripts per workflow (first the retention sweep, so expired records are not
        counted), every workflow at once; no record is read but the head's."""
        names = await self._workflow_names()
        found = await asyncio.gather(*(self._workflow_stats(name) for name in names))
        return [stats for stats in found if stats is not None]

    @_guarded
    async def quarantine(self, task: Task) -> Task:
        """Overwrite an unreadable record without a version check."""
        stored = next_version(task, task.version)
        data = _record(stored)
        await self._run(
            "quarantine", task.workflow,
            task.id, data, stored.status.value, stored.version, _ts(stored), self._retention_ms,
        )
        self._remember(task.id, task.workflow)
        return stored

    # -- queue ---------------------------------------------------------------------------

    @_guarded
    async def enqueue(self, workflow: str, task_id: str, *, not_before: datetime | None = None) -> None:
        """Queue `task_id` (idempotent); a future `not_before` delays it on the Redis clock."""
        await self._run("enqueue", workflow, task_id, _delay_ms(not_before))

    async def claim(self, workflow: str, *, lease: float, wait: float) -> Claim | None:
        """Lease the next ready task (`claim_many` with a limit of 1)."""
        claims = await self.claim_many(workflow, 1, lease=lease, wait=wait)
        return claims[0] if claims else None

    @_guarded
    async def claim_many(
        self, workflow: str, limit: int, *, lease: float, wait: float
    ) -> builtins.list[Claim]:
        """Lease up to `limit` ready tasks, oldest first, in one script (BatchClaims), which
        first runs the reaper (promotes due delayed tasks, re-delivers expired leases,
        recovers orphans) and returns each record too. With nothing ready, the claimer
        blocks in BLMOVE (woken by the next enqueue, not by polling), bounded by `wait` and
        by when the reaper next has work; the one id moved is then leased by the adopt
        script, and the other slots are filled by the worker's next call."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(0.0, wait)
        lease_ms = max(1, int(lease * 1000))
        grace_ms = max(1, int(self.orphan_grace * 1000))
        if self._retention_ms and loop.time() >= self._next_sweep.get(workflow, 0.0):
            self._next_sweep[workflow] = loop.time() + self.sweep_interval
            await self._sweep(workflow)
        while True:
            receipt = secrets.token_hex(8)
            reply = await self._run("claim", workflow, receipt, lease_ms, grace_ms, limit)
            granted = int(reply[0])
            if granted:
                return [
                    self._claim(workflow, receipt, reply[1 + 4 * i : 5 + 4 * i]) for i in range(granted)
                ]
            remaining = give_up - loop.time()
            if remaining <= 0:
                return []
            reaper_due = int(reply[1]) / 1000
            block = min(remaining, self.max_block, reaper_due if reaper_due >= 0 else math.inf)
            moved = await self._block(workflow, max(block, 0.001))
            if moved is None:
                continue
            reply = await self._run("adopt", workflow, moved, receipt, lease_ms)
            if reply[0]:
                return [self._claim(workflow, receipt, reply)]

    @_guarded
    async def extend(self, claim: Claim, *, lease: float) -> Claim:
        """Renew the lease for `lease` seconds from now on the Redis clock."""
        reply = await self._run(
            "extend", claim.workflow, claim.task_id, claim.receipt, max(1, int(lease * 1000))
        )
        _check_lease(reply, claim)
        return Claim(
            claim.task_id, claim.workflow, claim.receipt, claim.deliveries, int(reply[1]) / 1000
        )

    @_guarded
    async def ack(self, claim: Claim) -> None:
        """Drop the task from the queue for good, if `claim` is still the lease."""
        _check_lease(await self._run("ack", claim.workflow, claim.task_id, claim.receipt), claim)

    @_guarded
    async def release(self, claim: Claim, *, delay: float = 0.0) -> None:
        """Give the task back, ready now or after `delay` seconds (held by no lease)."""
        reply = await self._run(
            "release", claim.workflow, claim.task_id, claim.receipt, max(0, int(delay * 1000))
        )
        _check_lease(reply, claim)

    # -- backend -------------------------------------------------------------------------

    @_guarded
    async def submit(self, task: Task) -> Task:
        """Create and enqueue in one script, one round trip on a single server. A refused
        submit (the server is out of memory) writes nothing."""
        return await self._insert(task, enqueue=True)

    @_guarded
    async def requeue(self, task: Task, expected_version: int) -> Task:
        """A fenced update and a fresh queue entry in one script: any lease from before is
        voided (its ack, extend or release raises `LeaseLostError`) and any old due time
        replaced; the task is claimable now, or at `task.not_before`."""
        stored, data = self._encode_write(task, expected_version)
        reply = await self._run(
            "requeue", task.workflow,
            task.id, expected_version, data, stored.status.value, _ts(stored), self._retention_ms,
            _delay_ms(task.not_before),
        )
        _check_write(reply, task.id, expected_version)
        return stored

    @_guarded
    async def settle(self, task: Task, expected_version: int, claim: Claim) -> Task:
        """The final fenced write of a run and its ack, in one script. If `claim` is no
        longer the lease the record is still written and nothing is raised."""
        stored, data = self._encode_write(task, expected_version)
        reply = await self._run(
            "settle", task.workflow,
            task.id, expected_version, data, stored.status.value, _ts(stored), self._retention_ms,
            claim.receipt,
        )
        _check_write(reply, task.id, expected_version)
        return stored

    # -- internals ----------------------------------------------------------------------

    @property
    def _redis(self) -> RedisClient:
        if self._client is None or not self._open:
            raise BackendNotOpenError(f"Redis ({self.where})")
        return self._client

    async def _exec(self, *args: Any) -> Any:
        """One non-blocking command: on the shared multiplexed connection (single server)
        or through the cluster client (which routes it by its key)."""
        client = self._redis
        if self._mux is not None:
            return await self._mux.execute(*args)
        return await client.execute_command(*args)

    async def _load_scripts(self) -> None:
        """SCRIPT LOAD every script (on a cluster: on every primary)."""
        if self._mux is not None:
            await self._mux.execute_many([("SCRIPT", "LOAD", src) for src in _SOURCES.values()])
        else:
            await asyncio.gather(*(self._redis.script_load(src) for src in _SOURCES.values()))

    def _base(self, workflow: str) -> str:
        """`<prefix>{<prefix><workflow>}:`: every key of `workflow` starts with this.

        The name is percent-encoded (everything but letters, digits and `_.-~`), so it
        cannot contain `{`, `}`, `:` or `*`: it can neither end the hash tag early nor
        make two workflows' (or two prefixes') keys meet."""
        base = self._bases.get(workflow)
        if base is None:
            base = f"{self.prefix}{{{self.prefix}{quote(workflow, safe='')}}}:"
            self._bases[workflow] = base
        return base

    async def _run(self, script: str, workflow: str, *args: str | int | bytes) -> Any:
        """Run one of the Lua scripts on `workflow`'s slot by EVALSHA. A server that lost
        its script cache (restarted, failed over, SCRIPT FLUSH) gets them loaded again."""
        command = ("EVALSHA", _SHAS[script], 1, self._base(workflow), *args)
        try:
            return await self._exec(*command)
        except rx.NoScriptError:
            await self._load_scripts()
            return await self._exec(*command)

    async def _insert(self, task: Task, *, enqueue: bool) -> Task:
        stored = task.evolve(version=1)
        args = (
            task.id, _record(stored), stored.status.value, _ts(stored), task.idempotency_key or "",
            "1" if enqueue else "0", _delay_ms(task.not_before), self._retention_ms,
        )
        if self._mux is None:
            reply = await self._insert_on_cluster(task, args)
        else:
            # One script writes the record and its index entries: all or nothing, even
            # when the server is full and refuses the write.
            reply = await self._run_indexed(task.workflow, *args, task.workflow)
        self._remember(task.id, task.workflow)
        if int(reply[0]) == 1:
            return stored
        existing = decode_task(reply[1], task.id)
        if existing.id != task.id:
            self._workflow_of.pop(task.id, None)
        return existing

    async def _insert_on_cluster(self, task: Task, args: tuple[str | int | bytes, ...]) -> Any:
        """The submit script, after the index entries that live in other slots. If we die
        between, the entries point at nothing ("no such task"). If the script is refused
        (the workflow's node is full) the id entry is taken back: nothing is left but,
        possibly, the workflow's name, which other submits may be relying on already."""
        name = task.workflow
        results: tuple[Any, Any] = await asyncio.gather(
            self._exec("HSET", self._ids_key, task.id, name),
            self._exec("SADD", self._workflows_key, name),
            return_exceptions=True,
        )
        created = results[0]
        try:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            reply = await self._run("submit", name, *args)
        except rx.OutOfMemoryError:
            if created == 1:
                await self._exec("HDEL", self._ids_key, task.id)
            raise
        if int(reply[0]) == 0 and decode_task(reply[1], task.id).id != task.id:
            await self._exec("HDEL", self._ids_key, task.id)  # this id was never stored
        return reply

    async def _run_indexed(self, workflow: str, *args: str | int | bytes) -> Any:
        """`submit_indexed` on a single server: the workflow's keys and the two indexes."""
        command = (
            "EVALSHA", _SHAS["submit_indexed"], 3, self._base(workflow), self._ids_key,
            self._workflows_key, *args,
        )
        try:
            return await self._exec(*command)
        except rx.NoScriptError:
            await self._load_scripts()
            return await self._exec(*command)

    def _encode_write(self, task: Task, expected_version: int) -> tuple[Task, bytes]:
        stored = next_version(task, expected_version)
        return stored, _record(stored)

    def _claim(self, workflow: str, receipt: str, reply: builtins.list[Any]) -> Claim:
        task_id = _text(reply[0])
        self._remember(task_id, workflow)
        data = reply[3] if len(reply) > 3 else None
        task = _decoded_or_none(data, task_id) if data else None
        return Claim(task_id, workflow, receipt, int(reply[1]), int(reply[2]) / 1000, task)

    async def _block(self, workflow: str, seconds: float) -> str | None:
        """BLMOVE ready -> processing for up to `seconds`, under an outer timeout so a
        dead connection cannot hang the claimer (redis-py drops a cancelled connection)."""
        base = self._base(workflow)
        # redis-py annotates the timeout as int; Redis takes fractions of a second.
        command = self._redis.blmove(base + "ready", base + "processing", cast(int, seconds), "RIGHT", "LEFT")
        limit = seconds + 2.0
        try:
            moved = await asyncio.wait_for(command, limit)
        except asyncio.TimeoutError:
            raise rx.TimeoutError(
                f"BLMOVE on {base}ready (blocking for {seconds:.3g} s) did not answer within "
                f"{limit:.3g} s"
            ) from None
        return None if moved is None else _text(moved)

    async def _workflow(self, task_id: str) -> str | None:
        workflow = self._workflow_of.get(task_id)
        if workflow is None:
            raw = await self._exec("HGET", self._ids_key, task_id)
            if raw is None:
                return None
            workflow = _text(raw)
            self._remember(task_id, workflow)
        return workflow

    def _remember(self, task_id: str, workflow: str) -> None:
        cache = self._workflow_of
        if len(cache) >= 100_000:
            del cache[next(iter(cache))]  # the oldest entry
        cache[task_id] = workflow

    async def _forget(self, task_ids: builtins.list[str]) -> None:
        await self._exec("HDEL", self._ids_key, *task_ids)
        for task_id in task_ids:
            self._workflow_of.pop(task_id, None)

    async def _workflow_names(self) -> builtins.list[str]:
        names = await self._exec("SMEMBERS", self._workflows_key)
        return sorted(_text(n) for n in names)

    async def _sweep(self, workflow: str) -> None:
        """Forget tasks whose retention TTL ran out: status index (in the script), id
        index, and last the `expiring` entry, so a crash in between repeats the work."""
        while True:
            gone = [_text(i) for i in await self._run("sweep", workflow, 500)]
            if gone:
                await self._forget(gone)
                await self._exec("ZREM", self._base(workflow) + "expiring", *gone)
            if len(gone) < 500:
                return

    async def _fill(self, src: _Listing, statuses: tuple[TaskStatus, ...], count: int) -> None:
        """Load the next batch of `src`'s listing: the first `count` ids after its position
        across the wanted status indexes, merged (the script returns each index's run)."""
        count = max(count, 10)
        reply = await self._run("list", src.workflow, src.after, count, *(s.value for s in statuses))
        runs: dict[int, int] = {}
        entries: list[tuple[str, bytes]] = []
        for i in range(0, len(reply), 3):
            runs[int(reply[i])] = runs.get(int(reply[i]), 0) + 1
            entries.append((_text(reply[i + 1]), reply[i + 2]))
        entries.sort()
        full = any(n >= count for n in runs.values())
        if full:
            # Past the count-th id, some index may hold smaller ids not fetched yet.
            entries = entries[:count]
        src.buffer = entries
        src.done = not full
        if entries:
            src.after = entries[-1][0]

    async def _workflow_stats(self, workflow: str) -> WorkflowStats | None:
        """`workflow`'s figures from the stats script; None when it has no task stored."""
        await self._sweep(workflow)
        reply = await self._run("stats", workflow, _HEAD_LOOKUP)
        now = int(reply[0]) / 1000
        counts = {
            status.value: int(n) for status, n in zip(_ALL_STATUSES, reply[1:8], strict=True) if int(n)
        }
        if not counts:
            return None
        leased, later, oldest_due, head = int(reply[8]), int(reply[9]), int(reply[10]), reply[11]
        stats = WorkflowStats(
            workflow,
            counts=counts,
            queued=max(0, counts.get(TaskStatus.PENDING.value, 0) - leased - later),
            delayed=later,
            dead_letters=sum(counts.get(status.value, 0) for status in DEAD_LETTER_STATUSES),
            completions=tuple(int(n) for n in reply[12:]),
        )
        waits = [now - oldest_due / 1000] if oldest_due >= 0 else []
        task = _decoded_or_none(head, "?") if head else None
        if task is not None:
            waits.append(now - (task.not_before or task.created_at).timestamp())
        if stats.queued and waits:
            stats.oldest_wait_seconds = max(0.0, *waits)
        return stats

    def _unavailable(self, exc: BaseException) -> BackendUnavailableError:
        detail = str(exc) or type(exc).__name__
        return BackendUnavailableError(
            f"Redis at {self.where} is unavailable ({detail}); check that the server is "
            "running and reachable, and the URL's host, port, TLS settings and credentials. "
            "The engine retries by itself."
        )


@dataclass
class _Listing:
    """One workflow's position in a merged listing."""

    workflow: str
    after: str
    buffer: list[tuple[str, bytes]] = field(default_factory=list)
    done: bool = False


# -- helpers ------------------------------------------------------------------------------


def _load_sources() -> dict[str, str]:
    folder = resources.files("salvador_redis") / "scripts"
    common = (folder / "common.lua").read_text()
    names = [
        "submit", "submit_indexed", "enqueue", "claim", "adopt", "extend", "ack", "release",
        "update", "settle", "requeue", "quarantine", "delete", "list", "purge", "sweep", "stats",
    ]
    return {name: common + "\n" + (folder / f"{name}.lua").read_text() for name in names}


_SOURCES = _load_sources()
_SHAS = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in _SOURCES.items()}


def _multiplexer(client: aioredis.Redis) -> Multiplexer:
    """A multiplexer whose connection is made like `client`'s own (address, TLS, ACL
    user, database), with its socket timeout as the reply watchdog."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)  # the multiplexer retries, once per failure
    timeout = kwargs.get("socket_timeout") or 10.0
    return Multiplexer(lambda: pool.connection_class(**kwargs), timeout=float(timeout))


def _record(task: Task) -> bytes:
    data = encode_task(task)
    if len(data) > REDIS_STRING_LIMIT:
        raise PayloadTooLargeError(f"the record of task {task.id}", len(data), REDIS_STRING_LIMIT)
    return data


def _ts(task: Task) -> str:
    return repr(task.updated_at.timestamp())


def _delay_ms(not_before: datetime | None) -> int:
    if not_before is None:
        return 0
    return max(0, math.ceil((not_before - utcnow()).total_seconds() * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decoded_or_none(data: bytes, task_id: str) -> Task | None:
    try:
        return decode_task(data, task_id)
    except (CorruptRecordError, RecordVersionError):
        return None


def _check_write(reply: list[Any], task_id: str, expected_version: int) -> None:
    code = int(reply[0])
    if code == 1:
        return
    raise ConflictError(task_id, expected_version, int(reply[1]) if code == 0 else None)


def _check_lease(reply: list[Any], claim: Claim) -> None:
    if not int(reply[0]):
        raise LeaseLostError(claim.task_id, _text(reply[1]))


def _checked_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix:
        raise ConfigurationError(f"prefix must be a non-empty string, got {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ConfigurationError(
            f"prefix {prefix!r} contains '{{' or '}}', which Redis Cluster reads as a hash "
            "tag; use another prefix, e.g. 'app:'."
        )
    return prefix


def _checked_retention(retention: float | None) -> float | None:
    if retention is None:
        return None
    if isinstance(retention, bool) or not isinstance(retention, (int, float)) or not retention > 0:
        raise ConfigurationError(f"retention must be a number of seconds > 0, got {retention!r}")
    return float(retention)


def _decodes_responses(client: RedisClient) -> bool:
    if isinstance(client, RedisCluster):
        return bool(client.get_encoder().decode_responses)
    return bool(client.connection_pool.get_encoder().decode_responses)  # type: ignore[no-untyped-call]


def _socket_timeout(client: RedisClient) -> float | None:
    if isinstance(client, RedisCluster):
        kwargs: Mapping[str, Any] = client.get_connection_kwargs()
    else:
        kwargs = client.connection_pool.connection_kwargs
    timeout = kwargs.get("socket_timeout")
    return float(timeout) if timeout else None


def _parse_url(url: str, options: Mapping[str, Any]) -> tuple[_Settings, str, float | None]:
    """Connection settings, prefix and retention from `url` plus keyword `options` (which
    win over the query). Raises `ConfigurationError` naming the redacted URL."""
    where = redact_url(url) if isinstance(url, str) else repr(type(url))

    def bad(problem: str) -> ConfigurationError:
        return ConfigurationError(f"invalid Redis URL {where!r}: {problem}")

    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except (ValueError, TypeError, AttributeError) as exc:
        raise bad(f"{exc}; expected redis://[user:password@]host[:port][/db][?prefix=...]") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise bad("the scheme must be redis:// or rediss:// (TLS)")
    path = parts.path.strip("/")
    if not path.isdigit() and path:
        raise bad(f"the path must be a database number such as /0, not /{path}")
    parsed = UrlOptions(url, parts.query, options, known=_OPTIONS, kind="Redis")
    query = parsed.values
    tls = scheme == "rediss"
    if not tls and _TLS_OPTIONS & set(query):
        raise bad("TLS options need the rediss:// scheme")
    tls_options: dict[str, Any] = {k: query[k] for k in _TLS_OPTIONS & set(query)}
    if "ssl_cert_reqs" in tls_options:
        reqs = str(tls_options["ssl_cert_reqs"]).lower()
        if reqs not in ("none", "optional", "required"):
            raise bad(f"ssl_cert_reqs must be none, optional or required, not {reqs!r}")
        tls_options["ssl_cert_reqs"] = reqs
        if reqs == "none":
            tls_options["ssl_check_hostname"] = False
    cluster = parsed.flag("cluster", False)
    db = int(path or 0)
    if cluster and db != 0:
        raise bad("Redis Cluster has only database 0")
    retention = query.get("retention")
    settings = _Settings(
        where=where,
        host=parts.hostname or "localhost",
        port=port,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
        cluster=cluster,
        socket_timeout=_seconds(parsed, "socket_timeout", 10.0),
        socket_connect_timeout=_seconds(parsed, "socket_connect_timeout", 5.0),
        max_connections=parsed.count("max_connections", 256),
        tls_options=tls_options,
    )
    prefix = query.get("prefix", DEFAULT_PREFIX)
    return settings, prefix, None if retention is None else _seconds(parsed, "retention", None)


def _seconds(options: UrlOptions, name: str, default: float | None) -> float:
    seconds = options.seconds(name, default)
    assert seconds is not None  # the default, or a value the user gave
    return seconds
