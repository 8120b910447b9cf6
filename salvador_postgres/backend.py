"""`postgresql://`: task records and delivery in one PostgreSQL table, on asyncpg.

Layout. One table, `<schema>.tasks`, holds each record (the versioned JSON of
`encode_task`, bytea) beside the columns that the compare-and-set, listing and queue need
(`version`, `workflow`, `status`, `idempotency_key`, `updated_at`, never parsed out of the
JSON) and the task's queue state (`q_workflow`, `q_due`, `q_receipt`, `q_granted`,
`q_deliveries`). Record and queue entry in one row make every two-part transition one
statement, so one atomic transaction and one round trip:

- submit: one INSERT (record, queue entry, NOTIFY); a duplicate idempotency key meets the
  unique index and `ON CONFLICT DO NOTHING`, and the existing task is read instead;
- claim (and `claim_many`, a batch): one statement: the oldest due rows of the workflow,
  locked with `FOR UPDATE SKIP LOCKED` through the partial index `tasks_queue`, leased, and
  returned with their records; when none is due it returns how long until the next due
  time or lease deadline;
- a checkpoint (`update`): one UPDATE fenced by `WHERE version = $n`;
- settle: one UPDATE that writes the record (fenced) and clears the queue entry only if the
  claim's receipt is still the lease; requeue: one UPDATE that writes, re-queues and
  NOTIFYs.

Submits, checkpoints and settles issued in the same turn of the event loop (a batch of
runs writes together, a busy producer submits together) share one statement over arrays,
each row fenced on its own, so one round trip and one commit for the group: see
coalesce.py. Connections are kept between statements rather than given back to asyncpg's
pool each time (see `_Pool`).

A queued row is due when `q_receipt IS NULL` and `q_due <= now`; a leased row's `q_due` is
its lease deadline, so an expired lease is simply due again, is re-delivered with
`q_deliveries + 1`, and ack, extend and release check `q_due > clock_timestamp()`: a lease
is void the moment it expires. Every due time and deadline is computed by the server
(`clock_timestamp() + interval`), never from the worker's clock; a delay given as an
absolute `not_before` is turned into "seconds from now" on the caller's side, as on Redis.

Used as the queue beside another store (split URLs), `enqueue` of an id with no record adds
a row without one: invisible to `get` and `list`, deleted when acked.

Waiting: see listener.py. Transactional submit (`submit_in`): see transactional.py.
Schema versions: see schema.py.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar, cast

import asyncpg  # type: ignore[import-untyped]

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
    COMPLETION_MINUTES,
    DEAD_LETTER_STATUSES,
    Claim,
    Page,
    RecordVersionError,
    Task,
    TaskStatus,
    WorkflowStats,
    completion_buckets,
    decode_task,
    encode_task,
    next_version,
    purge_statuses,
    statuses_of,
    utcnow,
)
from salvador_postgres import schema as migrations
from salvador_postgres.coalesce import Coalesced
from salvador_postgres.durability import postgres_findings
from salvador_postgres.listener import Listener
from salvador_postgres.settings import Settings, parse_url, quote_ident
from salvador_postgres.transactional import driver_connection

__all__ = ["PostgresBackend"]

log = logging.getLogger("salvador.postgres")

#: A bytea value holds 1 GB; a record holds the body in base64 (4/3 larger) beside the step
#: results, so one payload may use a quarter.
MAX_RECORD_BYTES = 1_000_000_000
MAX_PAYLOAD_BYTES = MAX_RECORD_BYTES // 4
#: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; a longer workflow name is
#: sent empty, which wakes every workflow's claimers.
_MAX_PAYLOAD = 7999
_PURGE_BATCH = 1000
#: The most tasks one claim statement leases (a power of two: see _Statements.claim).
MAX_CLAIM_BATCH = 1024
#: Shortest pause of a claimer that saw a due task it could not lock (another claimer holds
#: it for the instant its claim takes), so that race never becomes a busy loop.
_LOCKED_PAUSE = 0.005

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Driver errors meaning "the server cannot be reached or cannot serve us right now".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # 57xxx: admin shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # 40xxx: serialization failure, deadlock
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby after a failover
    asyncpg.exceptions.InternalClientError,  # see _CONNECTION_LOST
)
_MISCONFIGURED: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # 28xxx: bad user or password
    asyncpg.exceptions.InvalidCatalogNameError,  # 3D000: no such database
)


#: Errors meaning the connection a statement went out on died under it (terminated by an
#: administrator or a failover, reset): the statement is sent once more on a fresh one.
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    ConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    # asyncpg's own state machine, left mid-operation by a connection terminated under it
    # ("cannot switch to state ...; another operation is in progress"): that connection
    # is unusable, and is thrown away.
    asyncpg.exceptions.InternalClientError,
)


class _Pool:
    """The backend's asyncpg pool, with one retry of a statement whose connection was lost,
    and connections kept between statements.

    Every statement of this backend may be sent twice: reads trivially; fenced writes
    because a first attempt that did commit makes the second fail its fence
    (`ConflictError`), which the engine resolves by re-reading; submit and enqueue are
    idempotent per task id; a claim whose reply was lost leaves a lease that expires; ack,
    extend and release are fenced by the receipt. Without the retry, every connection
    terminated under a worker would cost a run (and a lease's wait) instead of a round trip.

    A use of asyncpg's pool (an acquire, and a release that runs through `asyncio.shield`
    and a task of its own) costs about as much CPU as a round trip on loopback. So a
    connection whose statement succeeded is kept here for the next statement, most recent
    first. It goes back to the pool when a statement on it fails (the pool cleans it up,
    or replaces a dead one), when a caller is waiting for the pool (all `pool_size`
    connections are in use or kept), and when the backend closes.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._kept: builtins.list[Any] = []
        self._acquiring = 0  # callers now waiting in `pool.acquire()`
        self._closing = False

    async def fetch(self, sql: str, *args: Any) -> Any:
        return await self._twice("fetch", sql, args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._twice("fetchrow", sql, args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._twice("fetchval", sql, args)

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self._twice("execute", sql, args)

    async def _twice(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        for attempt in (1, 2):
            conn = await self._take()
            try:
                result = await getattr(conn, method)(sql, *args)
            except _CONNECTION_LOST:
                await self._discard(conn)
                if attempt == 2:
                    raise
                continue
            except BaseException:
                await self.pool.release(conn)
                raise
            await self._keep(conn)
            return result
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A connection of the pool for the body of the `async with` (migrations)."""
        conn = await self._take()
        try:
            yield conn
        finally:
            await self.pool.release(conn)

    async def close(self) -> None:
        """Give every kept connection back to the pool, and from now on each one as soon as
        its statement is done, so the pool can close."""
        self._closing = True
        kept, self._kept = self._kept, []
        for conn in kept:
            await self.pool.release(conn)

    async def _take(self) -> Any:
        while self._kept:
            conn = self._kept.pop()
            try:
                if not conn.is_closed():
                    return conn
            except asyncpg.InterfaceError:
                continue  # its connection closed while kept: asyncpg gave it back already
            await self._discard(conn)
        self._acquiring += 1
        try:
            return await self.pool.acquire()
        finally:
            self._acquiring -= 1

    async def _discard(self, conn: Any) -> None:
        """Throw away a dead connection; the pool opens a new one in its place."""
        with contextlib.suppress(asyncpg.InterfaceError):  # asyncpg gave it back already
            conn.terminate()
        await self.pool.release(conn)

    async def _keep(self, conn: Any) -> None:
        if self._closing or self._acquiring:
            await self.pool.release(conn)  # someone waits for a connection: theirs
        else:
            self._kept.append(conn)


def _guarded(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """Map driver errors at the boundary: unreachable server -> `BackendUnavailableError`,
    bad credentials, missing database or privileges, dropped schema -> `ConfigurationError`,
    each naming the redacted URL."""

    @functools.wraps(fn)
    async def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except (ConfigurationError, BackendUnavailableError):
            raise
        except _MISCONFIGURED as exc:
            backend = cast(PostgresBackend, args[0])
            raise ConfigurationError(
                f"PostgreSQL at {backend.where} refused the connection ({exc}); check the URL's "
                "user, password and database name."
            ) from None
        except asyncpg.exceptions.InsufficientPrivilegeError as exc:
            backend = cast(PostgresBackend, args[0])
            raise ConfigurationError(
                f"PostgreSQL at {backend.where} refused a statement ({exc}); the role needs "
                f"USAGE on schema {backend.schema!r} and SELECT, INSERT, UPDATE, DELETE on its "
                "tables (docs/backends/postgres.md, 'Roles and grants')."
            ) from None
        except (asyncpg.exceptions.UndefinedTableError, asyncpg.exceptions.InvalidSchemaNameError) as exc:
            backend = cast(PostgresBackend, args[0])
            raise ConfigurationError(
                f"PostgreSQL at {backend.where}: the salvador tables of schema {backend.schema!r} "
                f"are gone ({exc}); run the migrations again (`await backend.migrate()`)."
            ) from None
        except _UNAVAILABLE as exc:
            backend = cast(PostgresBackend, args[0])
            raise backend._unavailable(exc) from exc

    return guarded


class PostgresBackend:
    """Task store and queue on PostgreSQL:
    `postgresql://user:password@host:5432/db?schema=salvador`.

    Options (URL query or keyword arguments): `schema` (default `salvador`; created if
    missing), `pool_size` (connections per backend object, default 10), `statement_cache_size`
    (asyncpg's prepared-statement cache, default 100; 0 behind PgBouncer in transaction
    mode), `listen` (default true: idle claimers wait on LISTEN; false behind PgBouncer in
    transaction mode: they poll), `poll_interval` (seconds between two looks while not
    listening, default 0.5), `migrate` (true: bring the schema up to date on open; false:
    never run DDL; unset: create a missing schema, refuse to upgrade an older one),
    `application_name`, `connect_timeout` (seconds, default 10) and libpq's `sslmode`,
    `sslrootcert`, `sslcert`, `sslkey`, `sslcrl`, `target_session_attrs`.
    """

    max_payload_bytes: int | None = MAX_PAYLOAD_BYTES

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.where = settings.where
        self.schema = settings.schema
        self._pool: Any = None
        self._retrying: _Pool | None = None
        self._listener: Listener | None = None
        self._wakeups: dict[str, asyncio.Event] = {}
        self._sql = _Statements(quote_ident(settings.schema), settings.channel)
        # Submits, checkpoints and settles issued in one turn of the event loop share a
        # statement (coalesce.py).
        self._submits = Coalesced(self._db, self._sql.insert, self._sql.insert_many, _inserted)
        self._checkpoints = Coalesced(self._db, self._sql.update, self._sql.update_many, _fenced)
        self._settles = Coalesced(self._db, self._sql.settle, self._sql.settle_many, _fenced)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresBackend:
        """An unopened backend for `url` (`postgresql://` or `postgres://`). Raises
        `ConfigurationError` for a malformed URL or an unknown, repeated or invalid option."""
        return cls(parse_url(url, options))

    def __repr__(self) -> str:
        state = "open" if self._pool is not None else "closed"
        return f"PostgresBackend({self.where!r}, schema={self.schema!r}, {state})"

    # -- lifecycle -----------------------------------------------------------------------

    @_guarded
    async def open(self) -> None:
        """Connect, and check (or migrate: see the `migrate` option) the schema version.
        Safe to call twice. `BackendUnavailableError` when the server cannot be reached,
        `ConfigurationError` for credentials, privileges or a schema of another version."""
        if self._pool is not None:
            return
        kwargs = self.settings.connect_kwargs()
        pool = await asyncpg.create_pool(
            min_size=1, max_size=self.settings.pool_size, reset=_keep_session, **kwargs
        )
        try:
            async with pool.acquire() as conn:
                await self._check_schema(conn)
        except BaseException:
            await _close_pool(pool)
            raise
        self._pool = pool
        self._retrying = _Pool(pool)

    async def close(self) -> None:
        """Close the pool and the LISTEN connection. Safe to call twice; `open()` works again."""
        pool, self._pool = self._pool, None
        retrying, self._retrying = self._retrying, None
        listener, self._listener = self._listener, None
        self._wake(None)
        if listener is not None:
            await listener.close()
        if retrying is not None:
            await retrying.close()
        if pool is not None:
            await _close_pool(pool)

    async def __aenter__(self) -> PostgresBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @_guarded
    async def migrate(self) -> builtins.list[int]:
        """Bring the schema up to this code's version (creating it if needed); returns the
        versions applied. Safe while other processes migrate or run. Works opened or not."""
        if self._retrying is not None:
            async with self._retrying.connection() as conn:
                return await migrations.migrate(conn, self.schema, self.where)
        conn = await asyncpg.connect(**self.settings.connect_kwargs())
        try:
            return await migrations.migrate(conn, self.schema, self.where)
        finally:
            await conn.close()

    @_guarded
    async def durability_findings(self) -> builtins.list[Finding]:
        """What a crash or a failover would lose with the server's settings as salvador's
        connections see them (`fsync`, `full_page_writes`, `synchronous_commit`, standbys):
        see salvador_postgres/durability.py. Used by `salvador check` and `Engine.open`."""
        return await postgres_findings(self._db(), self.where)

    async def _check_schema(self, conn: Any) -> None:
        found = await migrations.current_version(conn, self.schema)
        if found > migrations.SCHEMA_VERSION:
            raise migrations.newer_schema_error(self.where, self.schema, found)
        if found == migrations.SCHEMA_VERSION:
            return
        wanted = self.settings.migrate
        if wanted or (wanted is None and found == 0):
            applied = await migrations.migrate(conn, self.schema, self.where)
            if applied:
                log.info("PostgreSQL at %s: schema %r migrated to version %d",
                         self.where, self.schema, applied[-1])
            return
        raise migrations.older_schema_error(self.where, self.schema, found)

    # -- store ---------------------------------------------------------------------------

    @_guarded
    async def create(self, task: Task) -> Task:
        """Insert `task` (version 1); a duplicate id or idempotency key returns the stored task."""
        return await self._insert(self._db(), task, queued=False)

    @_guarded
    async def get(self, task_id: str) -> Task | None:
        raw = await self._db().fetchval(self._sql.get, task_id)
        return None if raw is None else decode_task(raw, task_id)

    @_guarded
    async def update(self, task: Task, expected_version: int) -> Task:
        """Compare-and-set on `version`, one statement (shared with the other checkpoints
        issued in the same turn of the event loop: see coalesce.py)."""
        stored = next_version(task, expected_version)
        outcome = await self._checkpoints.write(_write_args(stored, expected_version))
        _check_write(outcome, task.id, expected_version)
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
        """Tasks in ascending id order, filtered on columns (no JSON is parsed to filter);
        corrupt records are skipped."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        wanted = statuses_of(status)
        where = ["record IS NOT NULL", "id > $1"]
        params: builtins.list[Any] = [cursor or ""]
        if workflow is not None:
            params.append(workflow)
            where.append(f"workflow = ${len(params)}")
        if wanted is not None:
            params.append(sorted(s.value for s in wanted))
            where.append(f"status = ANY(${len(params)}::text[])")
        params.append(limit + 1)
        sql = (
            f"SELECT id, record FROM {self._sql.table} WHERE {' AND '.join(where)} "
            f"ORDER BY id LIMIT ${len(params)}"
        )
        found: builtins.list[Task] = []
        while len(found) <= limit:
            async with self._planned_per_call() as conn:
                rows = await conn.fetch(sql, *params)
            for row in rows:
                try:
                    found.append(decode_task(row["record"], row["id"]))
                except (CorruptRecordError, RecordVersionError):
                    continue  # skipped here; the engine dead-letters it when claimed
                if len(found) > limit:
                    break
            if len(rows) <= limit:
                break
            params[0] = rows[-1]["id"]
        page = found[:limit]
        return Page(page, page[-1].id if len(found) > limit else None)

    @_guarded
    async def delete(self, task_id: str) -> bool:
        """Remove the row (record and queue entry). True if a record was removed."""
        return bool(await self._db().fetchval(self._sql.delete, task_id))

    @_guarded
    async def purge(self, *, older_than: datetime, statuses: Iterable[TaskStatus]) -> int:
        """Delete terminal tasks last updated before `older_than`, in batches of 1,000 rows
        read in id order (each batch its own short transaction, so purging a large backlog
        never holds locks long, and never rescans what it already passed)."""
        total = 0
        for status in sorted(s.value for s in purge_statuses(statuses)):
            after = ""
            while True:
                async with self._planned_per_call() as conn:
                    row = await conn.fetchrow(self._sql.purge, status, after, _PURGE_BATCH, older_than)
                total += row["deleted"]
                if row["scanned"] < _PURGE_BATCH:
                    break
                after = row["last"]
        return total

    @_guarded
    async def stats(self) -> builtins.list[WorkflowStats]:
        """Counts by workflow and status, the waiting queue's depth and oldest due time, and
        completions per minute (index tasks_completed) (TaskCounts): three aggregate queries
        on the database's clock, no record read."""
        db = self._db()
        found: dict[str, WorkflowStats] = {}
        table = self._sql.table
        for row in await db.fetch(
            f"SELECT workflow, status, count(*) AS n FROM {table} WHERE record IS NOT NULL "
            "GROUP BY workflow, status"
        ):
            stats = found.setdefault(row["workflow"], WorkflowStats(row["workflow"]))
            stats.counts[row["status"]] = row["n"]
            if TaskStatus(row["status"]) in DEAD_LETTER_STATUSES:
                stats.dead_letters += row["n"]
        for row in await db.fetch(
            "SELECT q_workflow, count(*) FILTER (WHERE q_due <= now()) AS due, "
            "count(*) FILTER (WHERE q_due > now()) AS later, "
            "extract(epoch FROM now() - min(q_due) FILTER (WHERE q_due <= now())) AS oldest "
            f"FROM {table} WHERE q_workflow IS NOT NULL AND q_receipt IS NULL AND status = 'pending' "
            "GROUP BY q_workflow"
        ):
            stats = found.setdefault(row["q_workflow"], WorkflowStats(row["q_workflow"]))
            stats.queued, stats.delayed = row["due"], row["later"]
            oldest = row["oldest"]
            stats.oldest_wait_seconds = None if oldest is None else max(0.0, float(oldest))
        # A completed task is never written again (unless requeued): updated_at is when it
        # completed. `now` is the server's current minute, so its clock decides the window.
        finished: dict[str, builtins.list[tuple[int, int]]] = {}
        current = 0
        for row in await db.fetch(
            "SELECT workflow, floor(extract(epoch FROM updated_at) / 60)::bigint AS minute, "
            "count(*) AS n, floor(extract(epoch FROM now()) / 60)::bigint AS now "
            f"FROM {table} WHERE status = 'completed' "
            f"AND updated_at >= date_trunc('minute', now()) - interval '{COMPLETION_MINUTES - 1} minutes' "
            "GROUP BY workflow, minute"
        ):
            finished.setdefault(row["workflow"], []).append((row["minute"], row["n"]))
            current = row["now"]
        for name, stats in found.items():
            stats.completions = completion_buckets(finished.get(name, ()), current * 60.0)
        return [found[name] for name in sorted(found)]

    @_guarded
    async def quarantine(self, task: Task) -> Task:
        """Overwrite an unreadable record without a version check."""
        stored = next_version(task, task.version)
        await self._db().execute(
            self._sql.quarantine, stored.id, stored.workflow, _record(stored), stored.status.value,
            stored.version, stored.updated_at,
        )
        return stored

    # -- queue ---------------------------------------------------------------------------

    @_guarded
    async def enqueue(self, workflow: str, task_id: str, *, not_before: datetime | None = None) -> None:
        """Queue `task_id` (idempotent); a waiting task is moved earlier, never later."""
        await self._db().execute(self._sql.enqueue, task_id, workflow, _delay(not_before), _payload(workflow))
        self._wake(workflow)

    async def claim(self, workflow: str, *, lease: float, wait: float) -> Claim | None:
        """Lease the oldest due task of `workflow` (`claim_many` with a limit of 1)."""
        claims = await self.claim_many(workflow, 1, lease=lease, wait=wait)
        return claims[0] if claims else None

    @_guarded
    async def claim_many(
        self, workflow: str, limit: int, *, lease: float, wait: float
    ) -> builtins.list[Claim]:
        """Lease up to `limit` of the oldest due tasks of `workflow` in one statement
        (BatchClaims). With none due, wait for a notification (or, while not listening,
        poll every `poll_interval`), and never past the next due time or lease deadline the
        last look reported."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        limit = min(limit, MAX_CLAIM_BATCH)
        # The smallest power of two at least `limit` (see _Statements.claim).
        batch = 1 << (limit - 1).bit_length()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(0.0, wait)
        listener = await self._listening()
        db = self._db()
        while True:
            # Taken before looking, so a notification that arrives during the look counts.
            event = self._wakeups.setdefault(workflow, asyncio.Event())
            # One receipt for the batch: every statement that checks a receipt also names
            # the task, so it still names each lease alone.
            receipt = secrets.token_hex(8)
            rows = await db.fetch(self._sql.claim(batch), workflow, receipt, float(lease), limit)
            if rows[0]["id"] is not None:
                return [
                    Claim(
                        row["id"], workflow, receipt, row["q_deliveries"], row["deadline"],
                        _readable(row["record"], row["id"]),
                    )
                    for row in rows
                ]
            remaining = give_up - loop.time()
            if remaining <= 0:
                return []
            nap = remaining
            next_in = rows[0]["next_in"]
            if next_in is not None:
                nap = min(nap, max(next_in, _LOCKED_PAUSE))
            if listener is None or not listener.listening:
                nap = min(nap, self.settings.poll_interval)
            try:
                await asyncio.wait_for(event.wait(), nap)
            except asyncio.TimeoutError:
                pass

    @_guarded
    async def extend(self, claim: Claim, *, lease: float) -> Claim:
        """Renew the lease for `lease` seconds from now on the server's clock."""
        deadline = await self._db().fetchval(self._sql.extend, claim.task_id, claim.receipt, float(lease))
        if deadline is None:
            raise LeaseLostError(claim.task_id, "it expired or was re-delivered")
        return Claim(claim.task_id, claim.workflow, claim.receipt, claim.deliveries, deadline)

    @_guarded
    async def ack(self, claim: Claim) -> None:
        """The task leaves the queue for good, if `claim` is still the unexpired lease."""
        if not await self._db().fetchval(self._sql.ack, claim.task_id, claim.receipt):
            raise LeaseLostError(claim.task_id, "it expired or was re-delivered")

    @_guarded
    async def release(self, claim: Claim, *, delay: float = 0.0) -> None:
        """Give the task back, due after `delay` seconds on the server's clock, leased by no one."""
        released = await self._db().fetchval(
            self._sql.release, claim.task_id, claim.receipt, max(0.0, float(delay)), _payload(claim.workflow)
        )
        if not released:
            raise LeaseLostError(claim.task_id, "it expired or was re-delivered")
        self._wake(claim.workflow)

    # -- backend -------------------------------------------------------------------------

    @_guarded
    async def submit(self, task: Task) -> Task:
        """Create and enqueue (and NOTIFY) in one statement, shared with the other submits
        issued in the same turn of the event loop; a duplicate enqueues nothing."""
        stored = task.evolve(version=1)
        if await self._submits.write(self._insert_args(stored, queued=True)):
            self._wake(task.workflow)
            return stored
        # A duplicate, or a queue entry enqueued before its record: sorted out alone.
        stored = await self._insert(self._db(), task, queued=True)
        if stored.id == task.id:
            self._wake(task.workflow)
        return stored

    @_guarded
    async def requeue(self, task: Task, expected_version: int) -> Task:
        """A fenced update and a fresh queue entry in one statement: any lease from before is
        void (its receipt no longer matches) and any old due time replaced."""
        stored = next_version(task, expected_version)
        row = await self._db().fetchrow(
            self._sql.requeue, *_write_args(stored, expected_version), _delay(task.not_before),
            _payload(task.workflow),
        )
        _check_write((bool(row["written"]), row["found"]), task.id, expected_version)
        self._wake(task.workflow)
        return stored

    @_guarded
    async def settle(self, task: Task, expected_version: int, claim: Claim) -> Task:
        """The final fenced write and the ack, one statement (shared with the other settles
        issued in the same turn of the event loop); a lost lease is not an error."""
        stored = next_version(task, expected_version)
        outcome = await self._settles.write((*_write_args(stored, expected_version), claim.receipt))
        _check_write(outcome, task.id, expected_version)
        return stored

    # -- transactional submit --------------------------------------------------------------

    async def submit_in(self, connection: Any, task: Task) -> Task:
        """`submit` on the caller's connection, inside its open transaction (the outbox
        pattern): the task exists, and its NOTIFY wakes workers, only when that transaction
        commits. `connection`: an asyncpg connection, a SQLAlchemy `AsyncConnection` or
        `AsyncSession` (asyncpg dialect). `TypeError` for anything else."""
        conn = await driver_connection(connection)
        return await self._submit_on(conn, task)

    @_guarded
    async def _submit_on(self, conn: Any, task: Task) -> Task:
        stored = await self._insert(conn, task, queued=True, savepoint=conn.is_in_transaction())
        if stored.id == task.id and not conn.is_in_transaction():
            self._wake(task.workflow)
        return stored

    # -- internals -----------------------------------------------------------------------

    def _db(self) -> _Pool:
        if self._retrying is None:
            raise BackendNotOpenError("PostgreSQL")
        return self._retrying

    @contextlib.asynccontextmanager
    async def _planned_per_call(self) -> AsyncIterator[Any]:
        """A connection in a transaction of its own whose statements are planned for their
        parameters, for listing and purging: their filters (a status, a workflow) select
        anything from no row to all of them. After five runs PostgreSQL may keep a
        prepared statement's generic plan, made without the values, if it looks no dearer
        than the custom ones so far (listing a common status five times, say): that plan
        walks the primary key and filters, and listed a status with 10 rows among
        1,000,000 in 300 ms instead of 0.3 ms."""
        async with self._db().connection() as conn, conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            yield conn

    async def _listening(self) -> Listener | None:
        """The LISTEN connection, started by the first claim (producers need none)."""
        if not self.settings.listen:
            return None
        self._db()
        if self._listener is None:
            self._listener = Listener(self.settings, self._wake)
            await self._listener.start()
        return self._listener

    def _wake(self, workflow: str | None) -> None:
        """Wake this object's claimers of `workflow` (None: of every workflow)."""
        if workflow is None:
            events = builtins.list(self._wakeups.values())
            self._wakeups.clear()
        else:
            event = self._wakeups.pop(workflow, None)
            events = [] if event is None else [event]
        for event in events:
            event.set()

    async def _insert(self, conn: Any, task: Task, *, queued: bool, savepoint: bool = False) -> Task:
        """Store `task` with version 1 (queued if `queued`), unless its id or its
        `(workflow, idempotency_key)` exists: then the stored task, unchanged."""
        stored = task.evolve(version=1)
        args = self._insert_args(stored, queued=queued)
        if await conn.fetchval(self._sql.insert, *args):
            return stored
        # A duplicate, or a queue entry enqueued before its record (split backends). Inside
        # a caller's transaction, under a savepoint: a statement failing here must not abort
        # the caller's transaction.
        for _ in range(3):
            if savepoint:
                async with conn.transaction():
                    found = await self._existing_or_fill(conn, stored, args)
            else:
                found = await self._existing_or_fill(conn, stored, args)
            if found is not None:
                return found
            if await conn.fetchval(self._sql.insert, *args):
                return stored
        raise BackendUnavailableError(
            f"PostgreSQL at {self.where}: task {task.id} could neither be inserted nor found "
            "(a concurrent delete kept removing it); try again."
        )

    @staticmethod
    def _insert_args(stored: Task, *, queued: bool) -> tuple[Any, ...]:
        """$1..$9 of the insert statement (and, as arrays, of the grouped one)."""
        return (
            stored.id, stored.workflow, _record(stored), stored.status.value, stored.idempotency_key,
            stored.updated_at, queued, _delay(stored.not_before), _payload(stored.workflow),
        )

    async def _existing_or_fill(self, conn: Any, stored: Task, args: tuple[Any, ...]) -> Task | None:
        """The task that took `stored`'s place, or `stored` once it filled a record-less
        queue entry with the same id; None when neither exists any more (try again)."""
        row = None
        if stored.idempotency_key is not None:
            row = await conn.fetchrow(self._sql.by_key, stored.workflow, stored.idempotency_key)
        if row is None:
            row = await conn.fetchrow(self._sql.by_id, stored.id)
        if row is not None:
            return decode_task(row["record"], row["id"])
        filled = await conn.fetchval(self._sql.fill_stub, *args[:6])
        return stored if filled else None

    def _unavailable(self, exc: BaseException) -> BackendUnavailableError:
        detail = str(exc) or type(exc).__name__
        return BackendUnavailableError(
            f"PostgreSQL at {self.where} is unavailable ({type(exc).__name__}: {detail}); check "
            "that the server is running and reachable, and the URL's host, port and TLS "
            "settings. The engine retries by itself."
        )


class _Statements:
    """Every SQL statement of one backend object, with its schema and channel filled in."""

    def __init__(self, schema: str, channel: str) -> None:
        t = self.table = f"{schema}.tasks"
        ch = channel.replace("'", "''")
        self.get = f"SELECT record FROM {t} WHERE id = $1 AND record IS NOT NULL"
        self.by_id = f"SELECT id, record FROM {t} WHERE id = $1 AND record IS NOT NULL"
        self.by_key = f"SELECT id, record FROM {t} WHERE workflow = $1 AND idempotency_key = $2"
        # $7: queued; $8: delay in seconds; $9: NOTIFY payload. ON CONFLICT without a target
        # covers both the primary key and the idempotency index. Returns a row only when
        # the task was inserted.
        self.insert = (
            f"WITH ins AS (INSERT INTO {t} (id, workflow, record, status, version, idempotency_key, "
            "updated_at, q_workflow, q_due) VALUES ($1, $2, $3, $4, 1, $5, $6, "
            "CASE WHEN $7::boolean THEN $2 END, "
            "CASE WHEN $7::boolean THEN clock_timestamp() + make_interval(secs => $8) END) "
            "ON CONFLICT DO NOTHING RETURNING q_workflow) "
            f"SELECT true AS written FROM ins, LATERAL (SELECT CASE WHEN ins.q_workflow IS NOT NULL "
            f"THEN pg_notify('{ch}', $9) END) AS n"
        )
        # The same for many tasks at once (coalesce.py): one row per task, `written` false
        # for those left out (a duplicate: sorted out one by one), and one NOTIFY per
        # workflow that got a task, all delivered at the commit.
        self.insert_many = (
            "WITH v AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], "
            "$6::timestamptz[], $7::boolean[], $8::float8[], $9::text[]) "
            "AS v(id, workflow, record, status, key, updated_at, queued, delay, payload)), "
            f"ins AS (INSERT INTO {t} (id, workflow, record, status, version, idempotency_key, "
            "updated_at, q_workflow, q_due) SELECT id, workflow, record, status, 1, key, updated_at, "
            "CASE WHEN queued THEN workflow END, "
            "CASE WHEN queued THEN clock_timestamp() + make_interval(secs => delay) END FROM v "
            "ON CONFLICT DO NOTHING RETURNING id, q_workflow), "
            f"woken AS (SELECT count(pg_notify('{ch}', p)) AS n FROM (SELECT DISTINCT v.payload AS p "
            "FROM v JOIN ins ON ins.id = v.id WHERE ins.q_workflow IS NOT NULL) AS d) "
            "SELECT v.id, ins.id IS NOT NULL AS written FROM v LEFT JOIN ins ON ins.id = v.id, woken"
        )
        # A row without a record is a queue entry enqueued before (or without) its record.
        self.fill_stub = (
            f"UPDATE {t} SET workflow = $2, record = $3, status = $4, version = 1, "
            "idempotency_key = $5, updated_at = $6 WHERE id = $1 AND record IS NULL RETURNING true"
        )
        # The outer SELECT reads the row as it was before the UPDATE: on a failed fence it
        # gives the version found (NULL: no record) for ConflictError, in the same round trip.
        fence = "WHERE id = $1 AND version = $2 AND record IS NOT NULL"
        write = "record = $3, status = $4, version = $5, updated_at = $6"
        outcome = (
            f"SELECT (SELECT count(*) FROM upd) AS written, "
            f"(SELECT version FROM {t} WHERE id = $1 AND record IS NOT NULL) AS found"
        )
        self.update = f"WITH upd AS (UPDATE {t} SET {write} {fence} RETURNING 1) {outcome}"
        # The same writes for many tasks at once (coalesce.py): $1..$6 (and a settle's $7)
        # are arrays, one element per task, in id order, so overlapping groups lock their
        # rows in one order. Per task: whether it was written, and else the version found.
        arrays = "$1::text[], $2::bigint[], $3::bytea[], $4::text[], $5::bigint[], $6::timestamptz[]"
        names = "id, expected, record, status, version, updated_at"
        write_v = "record = v.record, status = v.status, version = v.version, updated_at = v.updated_at"
        fence_v = "FROM v WHERE t.id = v.id AND t.version = v.expected AND t.record IS NOT NULL"
        outcomes = (
            "SELECT v.id, upd.id IS NOT NULL AS written, CASE WHEN upd.id IS NULL THEN "
            f"(SELECT o.version FROM {t} AS o WHERE o.id = v.id AND o.record IS NOT NULL) END AS found "
            "FROM v LEFT JOIN upd ON upd.id = v.id"
        )
        self.update_many = (
            f"WITH v AS (SELECT * FROM unnest({arrays}) AS v({names})), "
            f"upd AS (UPDATE {t} AS t SET {write_v} {fence_v} RETURNING t.id) {outcomes}"
        )
        # The queue half applies only while the claim's receipt ($7) is the current lease.
        mine = "q_receipt = $7"
        self.settle = (
            f"WITH upd AS (UPDATE {t} SET {write}, "
            f"q_workflow = CASE WHEN {mine} THEN NULL ELSE q_workflow END, "
            f"q_due = CASE WHEN {mine} THEN NULL ELSE q_due END, "
            f"q_granted = CASE WHEN {mine} THEN NULL ELSE q_granted END, "
            f"q_deliveries = CASE WHEN {mine} THEN 0 ELSE q_deliveries END, "
            f"q_receipt = CASE WHEN {mine} THEN NULL ELSE q_receipt END "
            f"{fence} RETURNING 1) {outcome}"
        )
        mine_v = "t.q_receipt = v.receipt"
        self.settle_many = (
            f"WITH v AS (SELECT * FROM unnest({arrays}, $7::text[]) AS v({names}, receipt)), "
            f"upd AS (UPDATE {t} AS t SET {write_v}, "
            f"q_workflow = CASE WHEN {mine_v} THEN NULL ELSE t.q_workflow END, "
            f"q_due = CASE WHEN {mine_v} THEN NULL ELSE t.q_due END, "
            f"q_granted = CASE WHEN {mine_v} THEN NULL ELSE t.q_granted END, "
            f"q_deliveries = CASE WHEN {mine_v} THEN 0 ELSE t.q_deliveries END, "
            f"q_receipt = CASE WHEN {mine_v} THEN NULL ELSE t.q_receipt END "
            f"{fence_v} RETURNING t.id) {outcomes}"
        )
        # Voids whatever lease or delay the row holds: due in $7 seconds; a claim from
        # before no longer matches q_receipt. $8: NOTIFY payload.
        self.requeue = (
            f"WITH upd AS (UPDATE {t} SET {write}, q_workflow = workflow, "
            "q_due = clock_timestamp() + make_interval(secs => $7), q_receipt = NULL, "
            f"q_granted = NULL, q_deliveries = 0 {fence} RETURNING pg_notify('{ch}', $8)) {outcome}"
        )
        self.quarantine = (
            f"INSERT INTO {t} (id, workflow, record, status, version, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET workflow = excluded.workflow, "
            "record = excluded.record, status = excluded.status, version = excluded.version, "
            "updated_at = excluded.updated_at"
        )
        self.delete = f"DELETE FROM {t} WHERE id = $1 RETURNING record IS NOT NULL"
        # One batch: the next $3 rows of status $1 after id $2, of which those last updated
        # before $4 are deleted.
        self.purge = (
            f"WITH batch AS (SELECT id FROM {t} WHERE status = $1 AND id > $2 AND record IS NOT NULL "
            "ORDER BY id LIMIT $3), "
            f"gone AS (DELETE FROM {t} WHERE id IN (SELECT id FROM batch) AND status = $1 "
            "AND updated_at < $4 RETURNING 1) "
            "SELECT (SELECT count(*) FROM batch) AS scanned, (SELECT max(id) FROM batch) AS last, "
            "(SELECT count(*) FROM gone)::int AS deleted"
        )
        # Queues a record-less or unqueued row; moves a waiting (unleased) one earlier.
        self.enqueue = (
            f"WITH q AS (INSERT INTO {t} AS t (id, workflow, q_workflow, q_due) "
            "VALUES ($1, $2, $2, clock_timestamp() + make_interval(secs => $3)) "
            "ON CONFLICT (id) DO UPDATE SET q_workflow = excluded.q_workflow, q_due = excluded.q_due, "
            "q_receipt = NULL, q_granted = NULL, "
            "q_deliveries = CASE WHEN t.q_workflow IS NULL THEN 0 ELSE t.q_deliveries END "
            "WHERE t.q_workflow IS NULL OR (t.q_receipt IS NULL AND t.q_due > excluded.q_due) "
            f"RETURNING 1) SELECT pg_notify('{ch}', $4) FROM q"
        )
        self._table = t
        self._claims: dict[int, str] = {}
        live = "id = $1 AND q_receipt = $2 AND q_due > clock_timestamp()"
        self.extend = (
            f"UPDATE {t} SET q_due = clock_timestamp() + make_interval(secs => $3), "
            f"q_granted = clock_timestamp() WHERE {live} RETURNING extract(epoch FROM q_due)::float8"
        )
        # A record-less row (a queue entry of a split backend) is deleted when acked.
        self.ack = (
            f"WITH gone AS (DELETE FROM {t} WHERE {live} AND record IS NULL RETURNING 1), "
            f"acked AS (UPDATE {t} SET q_workflow = NULL, q_due = NULL, q_receipt = NULL, "
            f"q_granted = NULL, q_deliveries = 0 WHERE {live} AND record IS NOT NULL RETURNING 1) "
            "SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM acked) > 0"
        )
        self.release = (
            f"UPDATE {t} SET q_receipt = NULL, q_granted = NULL, "
            f"q_due = clock_timestamp() + make_interval(secs => $3) WHERE {live} "
            f"RETURNING pg_notify('{ch}', $4) IS NOT NULL"
        )


    def claim(self, batch: int) -> str:
        """The claim of up to $4 tasks, $4 at most `batch` (a power of two, written into
        the statement).

        The $4 oldest due rows of workflow $1 (index tasks_queue), locked without waiting
        for rows other claimers hold, leased to receipt $2 for $3 seconds, oldest due
        first. With none due, one row of NULLs and `next_in`: seconds until the workflow's
        next due time or lease deadline (negative: a due row another claimer holds this
        instant). The rows are looked up with `LIMIT batch`, a literal, and leased up to
        $4 of them: the plan PostgreSQL caches for a prepared statement is made without the
        parameters' values, and it prices `LIMIT $4` as a tenth of the queue. For a deep
        queue it then either planned the claim again on every run (0.4 ms per claim with
        1,000,000 pending: claims/s at 62-70% of those with 1,000) or, where index lookups
        are priced high (`random_page_cost`), cached a scan of the whole table. With the
        limit written in, the cached plan is the index scan a claim of that many rows
        needs. Up to `batch - $4` more rows are locked than leased, for the instant of the
        statement; powers of two keep the variants few (11 statements in asyncpg's cache
        for limits up to 1,024)."""
        sql = self._claims.get(batch)
        if sql is None:
            t = self._table
            sql = self._claims[batch] = (
                f"WITH next AS (SELECT id, q_due FROM {t} "
                "WHERE q_workflow = $1 AND q_due <= clock_timestamp() "
                f"ORDER BY q_workflow, q_due LIMIT {int(batch)} FOR UPDATE SKIP LOCKED), "
                f"claimed AS (UPDATE {t} AS t SET q_receipt = $2, q_granted = clock_timestamp(), "
                "q_due = clock_timestamp() + make_interval(secs => $3), q_deliveries = t.q_deliveries + 1 "
                "WHERE t.id = ANY(ARRAY(SELECT id FROM next ORDER BY q_due LIMIT $4)) "
                "RETURNING t.id, t.q_deliveries, t.record, extract(epoch FROM t.q_due)::float8 AS deadline, "
                "set_config('synchronous_commit', 'off', true) AS relaxed) "
                "SELECT claimed.id, q_deliveries, record, deadline, NULL::float8 AS next_in, "
                "next.q_due AS was_due, relaxed FROM claimed JOIN next ON next.id = claimed.id "
                "UNION ALL SELECT NULL, NULL, NULL, NULL, "
                f"extract(epoch FROM (SELECT min(q_due) FROM {t} WHERE q_workflow = $1) "
                "- clock_timestamp())::float8, NULL, NULL WHERE NOT EXISTS (SELECT 1 FROM claimed) "
                "ORDER BY was_due"
            )
        return sql


async def _close_pool(pool: Any) -> None:
    """Close `pool`, giving connections 5 s to finish; then cut the rest."""
    try:
        await asyncio.wait_for(pool.close(), 5.0)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        pool.terminate()


def _record(task: Task) -> bytes:
    data = encode_task(task)
    if len(data) > MAX_RECORD_BYTES:
        raise PayloadTooLargeError(f"the record of task {task.id}", len(data), MAX_RECORD_BYTES)
    return data


def _write_args(stored: Task, expected_version: int) -> tuple[Any, ...]:
    """$1..$6 of a fenced write (update, settle, requeue)."""
    return (
        stored.id, expected_version, _record(stored), stored.status.value, stored.version, stored.updated_at,
    )


def _inserted(row: Any) -> bool:
    """A submit's outcome: whether its task was inserted (and queued)."""
    return row is not None and bool(row["written"])


def _fenced(row: Any) -> tuple[bool, int | None]:
    """A fenced write's outcome: whether it was written, else the version found (None: no
    record)."""
    found = row["found"]
    return bool(row["written"]), None if found is None else int(found)


def _check_write(outcome: tuple[bool, int | None], task_id: str, expected_version: int) -> None:
    written, found = outcome
    if written:
        return
    raise ConflictError(task_id, expected_version, None if found is None else int(found))


async def _keep_session(conn: Any) -> None:
    """What the pool does to a connection given back to it: nothing but asyncpg's own
    clean-up (an open transaction rolled back, listeners dropped). asyncpg's default also
    sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`, a second
    round trip for every statement. This backend's pooled connections hold no session
    state to reset: no session advisory lock (migrations take transaction-level ones), no
    cursor, no LISTEN (the listener has a connection of its own), no SET."""


def _delay(not_before: datetime | None) -> float:
    """Seconds from now until `not_before` (0 for None or the past), for the server to add
    to its own clock."""
    if not_before is None:
        return 0.0
    return max(0.0, (not_before - utcnow()).total_seconds())


def _payload(workflow: str) -> str:
    return workflow if len(workflow.encode()) <= _MAX_PAYLOAD else ""


def _readable(raw: bytes | None, task_id: str) -> Task | None:
    """The decoded record, or None for one the engine must read (and handle) itself."""
    if raw is None:
        return None
    try:
        return decode_task(raw, task_id)
    except (CorruptRecordError, RecordVersionError):
        return None
