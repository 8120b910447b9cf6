"""`sqlite:///path.db`: the embedded default. One file, WAL, several processes on one machine.

Layout. One table, `tasks`, holds each record (the versioned JSON of `encode_task`, as a
BLOB) beside the columns that compare-and-set and listing need (`version`, `workflow`,
`status`, `idempotency_key`, `updated_at`, never parsed out of the JSON) and the task's
queue state (`q_workflow`, `q_due`, `q_receipt`, `q_deliveries`). With both in one row every
two-part transition is a single statement, so a single atomic transaction:

- submit: one INSERT (record and queue entry); a duplicate idempotency key fails the unique
  index `(workflow, idempotency_key)` and the existing task is returned instead;
- claim: one `UPDATE ... RETURNING` that leases the oldest due row and returns its record;
  `claim_many` (a batch) runs it once per task in one transaction, so one commit;
- a step checkpoint (`update`): one UPDATE fenced by `WHERE version = ?`;
- settle: one UPDATE that writes the record (fenced) and clears the queue entry only if the
  claim's receipt is still the current lease; requeue: one UPDATE that writes and enqueues.

A queued row is claimable when `q_due <= now`. `q_due` is the due time of a ready or delayed
task and the deadline of a leased one, so an expired lease simply becomes due again and is
re-delivered with `q_deliveries + 1`, and a delayed task holds no lease (`q_receipt` is
NULL). A receipt is `<token>:<lease granted>`; the token names the lease. `requeue` voids
any lease or delay: the row is due at once (or at `not_before`) and older claims are stale.

Clocks. Times are epoch seconds from this machine's wall clock (`time.time()`), which every
process on it shares. A lease whose deadline lies more than a second further ahead than the
lease granted means the clock was set back since it was written: the claim treats it as
expired (see _CLAIM), so a step back cannot stretch a dead worker's lease. A step forward
expires leases early (the version fence keeps the old owner's writes out); delays
(`not_before`, retry back-off) move with the clock either way.

Used as the queue beside another store (split URLs), `enqueue` of an id with no record here
adds a row without one: invisible to `get` and `list`, deleted when acked.

Concurrency. All database work of one backend object runs on one dedicated thread holding
one connection, so the event loop never blocks on SQLite. Processes share the file through
SQLite's own locking: in WAL mode readers never wait and writers take turns; a writer waits
up to `busy_timeout` seconds for the lock, then fails with `BackendUnavailableError`.
Multi-statement transactions start with `BEGIN IMMEDIATE` so they never deadlock on a lock
upgrade. A call whose caller stopped waiting (cancelled, timed out) still runs to the end; a
claim lost that way is re-delivered when its lease expires, like one whose worker died.

Group commit. A commit costs several times more than the statement it commits, so writes
that queue up for the thread while it is busy (concurrent claims and checkpoints) run as
one `BEGIN IMMEDIATE ... COMMIT` of up to `_GROUP_MAX` calls. Each call is still atomic on
its own (a failing statement undoes only itself), and no caller hears of success before
the shared COMMIT; if that fails, every call in the group fails and nothing was written.
Reads never join a group, so they never wait for another process's write lock.

Waiting in `claim`. A claimer that finds nothing due sleeps until the earliest due time or
lease deadline of its workflow, and is woken at once by enqueues, releases and requeues made
through the same backend object. SQLite cannot notify other processes, so the backend does:
a backend object whose claimers wait binds a Unix datagram socket in `<database>-wake/`,
and one that committed a submit, enqueue, release or requeue sends each socket there a
datagram naming the workflow (see _WakeSockets), which wakes that workflow's claimers in
about a millisecond and costs nothing while nobody rings. As a safety net, one watcher per
backend object reads `PRAGMA data_version` (a counter that changes when another connection
commits; no table is read) every `safety_net_interval` seconds (1 s) and wakes each claimer
that looked before the latest such commit: it covers writers running an older salvador. When
no socket can be bound (no AF_UNIX, or the directory cannot be created), the watcher looks
every `watch_interval` (50 ms) instead. Either way a claimer is woken at most once per
interval by other processes' unrelated commits: a bounded poll, never a spin.

Faults. The path is checked every `identity_check_interval` seconds, and after any SQLite
error, to still name the file this process opened (st_dev, st_ino): a database deleted or
replaced under a running process is logged as an ERROR and every further call raises
`BackendUnavailableError` saying so, rather than working on in an unlinked file nobody else
sees. A read-only filesystem and an immutable (chattr +i) file are named as such. The
database is read without mmap (`mmap_size = 0`); WAL's `-shm` index is always mapped, so a
process that touches a `-shm` file made immutable under it is killed with SIGBUS.

Durability. `synchronous=normal` (the default) survives the crash of any process at any
instant; after a power loss or OS crash the last transactions before it may be rolled back
(the file stays consistent). `?synchronous=full` makes every commit survive those too, at
the price of an fsync per commit.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import logging
import os
import queue
import secrets
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit

from salvador_core.config import UrlOptions
from salvador_core.errors import (
    BackendNotOpenError,
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    CorruptRecordError,
    LeaseLostError,
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
)

__all__ = ["SCHEMA_VERSION", "SQLiteBackend"]

_T = TypeVar("_T")

log = logging.getLogger("salvador.sqlite")

#: The layout this code reads and writes, kept in `PRAGMA user_version`. A file with a
#: newer one is refused: it was written by a newer salvador.
SCHEMA_VERSION = 1

#: `UPDATE ... RETURNING` arrived in SQLite 3.35 (2021-03).
MIN_SQLITE_VERSION = (3, 35, 0)

#: SQLite refuses values over SQLITE_MAX_LENGTH (10^9 bytes by default); a record holds the
#: body in base64 (4/3 larger) beside the step results, so one payload may use a quarter.
MAX_PAYLOAD_BYTES = 1_000_000_000 // 4

_SYNCHRONOUS = ("normal", "full", "extra")
_OPTIONS = ("synchronous", "busy_timeout")
_DEFAULT_BUSY_TIMEOUT = 5.0
#: A `busy_timeout` above this is taken for milliseconds and refused with a hint.
_MAX_BUSY_TIMEOUT = 600.0
_PURGE_BATCH = 500
#: Most calls one group commit takes (see the module docstring).
_GROUP_MAX = 64

_SCHEMA = (
    """
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY NOT NULL,
        workflow TEXT NOT NULL,
        record BLOB,
        status TEXT,
        version INTEGER,
        idempotency_key TEXT,
        updated_at REAL,
        q_workflow TEXT,
        q_due REAL,
        q_receipt TEXT,
        q_deliveries INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE UNIQUE INDEX tasks_idempotency ON tasks (workflow, idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
    "CREATE INDEX tasks_status ON tasks (status, id)",
    "CREATE INDEX tasks_queue ON tasks (q_workflow, q_due) WHERE q_workflow IS NOT NULL",
)
#: Added to files of schema version 1 when opened (no new column, so the version stays):
#: the leases in flight, for the claim's clock check. Older salvador ignores it.
_LEASES_INDEX = (
    "CREATE INDEX IF NOT EXISTS tasks_leases ON tasks (q_workflow) WHERE q_receipt IS NOT NULL"
)
#: Tasks by workflow and status, kept by triggers on `tasks` in the statement that changes a
#: status, so reading them costs nothing however many tasks are stored (counting an index
#: took ~150 ms per million tasks). The triggers live in the file: every process writing to
#: it keeps the counts, whatever salvador version it runs. Made, and filled from the table
#: once, by the first process that opens the file with this code (see _prepare_counts).
#: (Earlier versions counted the index `tasks_counts (workflow, status)`, made on open; this
#: one no longer makes it, and leaves it in a file that has it.)
_COUNTS_TABLE = (
    "CREATE TABLE task_counts (workflow TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL, "
    "PRIMARY KEY (workflow, status)) WITHOUT ROWID"
)
_COUNTS_FILL = (
    "INSERT INTO task_counts (workflow, status, n) "
    "SELECT workflow, status, count(*) FROM tasks WHERE status IS NOT NULL GROUP BY workflow, status"
)
# A row with no status is a queue entry without its record: not a task (yet). One statement
# per trigger: each statement a trigger runs costs about as much as the counting itself.
_COUNTS_TRIGGERS = (
    "CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks WHEN new.status IS NOT NULL BEGIN "
    "INSERT INTO task_counts (workflow, status, n) VALUES (new.workflow, new.status, 1) "
    "ON CONFLICT (workflow, status) DO UPDATE SET n = n + 1; END",
    "CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks WHEN old.status IS NOT NULL BEGIN "
    "UPDATE task_counts SET n = n - 1 WHERE workflow = old.workflow AND status = old.status; END",
    "CREATE TRIGGER task_counts_update AFTER UPDATE OF workflow, status ON tasks "
    "WHEN old.status IS NOT new.status OR old.workflow IS NOT new.workflow BEGIN "
    "INSERT INTO task_counts (workflow, status, n) "
    "SELECT old.workflow, old.status, -1 WHERE old.status IS NOT NULL "
    "UNION ALL SELECT new.workflow, new.status, 1 WHERE new.status IS NOT NULL "
    "ON CONFLICT (workflow, status) DO UPDATE SET n = n + excluded.n; END",
)
_COUNT_STATUSES = "SELECT workflow, status, n FROM task_counts WHERE n > 0"
#: Added the same way: completed tasks by finish time, for completions per minute (`stats`).
#: Only a write that completes a task (or purges one) touches it.
_COMPLETED_INDEX = (
    "CREATE INDEX IF NOT EXISTS tasks_completed ON tasks (updated_at, workflow) WHERE status = 'completed'"
)
#: Added the same way: the waiting queue (pending, not leased), for its depth and oldest due
#: time (`stats`); its entries change where the queue's do (submit, claim, release, requeue).
_WAITING_INDEX = (
    "CREATE INDEX IF NOT EXISTS tasks_waiting ON tasks (q_workflow, q_due) "
    "WHERE q_receipt IS NULL AND status = 'pending'"
)
# A completed task is never written again (unless requeued), so `updated_at` is when it
# completed; the last hour's part of tasks_completed. INDEXED BY: without ANALYZE figures
# SQLite's planner prefers tasks_status, which reads every completed row.
_COUNT_COMPLETIONS = (
    "SELECT workflow, CAST(updated_at / 60 AS INTEGER) AS minute, count(*) FROM tasks "
    "INDEXED BY tasks_completed WHERE status = 'completed' AND updated_at >= :since "
    "GROUP BY workflow, minute"
)
# Waiting queue entries (no lease) of records that exist: due now, or later; from
# tasks_waiting alone (INDEXED BY: see above).
_COUNT_QUEUE = (
    "SELECT q_workflow, sum(q_due <= :now), sum(q_due > :now), min(iif(q_due <= :now, q_due, NULL)) "
    "FROM tasks INDEXED BY tasks_waiting WHERE q_workflow IS NOT NULL AND q_receipt IS NULL "
    "AND status = 'pending' GROUP BY q_workflow"
)

_INSERT = (
    "INSERT INTO tasks (id, workflow, record, status, version, idempotency_key, updated_at, "
    "q_workflow, q_due) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A row without a record is a queue entry enqueued before (or without) its record.
_FILL_STUB = (
    "UPDATE tasks SET workflow = ?, record = ?, status = ?, version = ?, idempotency_key = ?, "
    "updated_at = ? WHERE id = ? AND record IS NULL"
)
_UPDATE = (
    "UPDATE tasks SET record = :record, status = :status, version = :version, "
    "updated_at = :updated_at WHERE id = :id AND version = :expected AND record IS NOT NULL"
)
# The ack half applies only while the claim's receipt is the current lease. SET expressions
# all read the row as it was, so their order does not matter. A receipt is `<token>:<lease>`
# (see _receipt); the token alone names the lease, so a claim from before an `extend` that
# rewrote the lease part still matches.
_SETTLE = (
    "UPDATE tasks SET record = :record, status = :status, version = :version, "
    "updated_at = :updated_at, q_workflow = iif(substr(q_receipt, 1, 16) = :token, NULL, q_workflow), "
    "q_due = iif(substr(q_receipt, 1, 16) = :token, NULL, q_due), "
    "q_deliveries = iif(substr(q_receipt, 1, 16) = :token, 0, q_deliveries), "
    "q_receipt = iif(substr(q_receipt, 1, 16) = :token, NULL, q_receipt) "
    "WHERE id = :id AND version = :expected AND record IS NOT NULL"
)
# Requeue voids whatever lease or delay the row holds: the task is due at `:due`, and a
# claim older than the requeue no longer matches `q_receipt` (its ack, extend, release and
# the queue half of its settle change nothing).
_REQUEUE = (
    "UPDATE tasks SET record = :record, status = :status, version = :version, "
    "updated_at = :updated_at, q_workflow = :workflow, q_due = :due, q_receipt = NULL, "
    "q_deliveries = 0 WHERE id = :id AND version = :expected AND record IS NOT NULL"
)
_ENQUEUE = (
    "INSERT INTO tasks (id, workflow, q_workflow, q_due) VALUES (:id, :workflow, :workflow, :due) "
    "ON CONFLICT (id) DO UPDATE SET q_workflow = excluded.q_workflow, q_due = excluded.q_due, "
    "q_receipt = NULL, q_deliveries = iif(q_workflow IS NULL, 0, q_deliveries) "
    "WHERE q_workflow IS NULL OR (q_receipt IS NULL AND q_due > excluded.q_due)"
)
# The oldest due row (index tasks_queue); only when none is due, a lease whose deadline lies
# more than a second further ahead than the lease granted (index tasks_leases): the wall
# clock was set back since, so the deadline no longer means what it meant and the lease
# counts as expired. coalesce() evaluates its second argument only when the first is NULL.
# That check reads the clock as the statement runs (SQLite's 'now', whole milliseconds,
# hence the second of slack), not `:now`, which was read before waiting for the write lock
# and may be older than a deadline another process wrote meanwhile. Receipts written by
# earlier salvador (16 hex digits, no lease part) are never judged this way.
_CLAIM = (
    "UPDATE tasks SET q_receipt = :receipt, q_due = :deadline, q_deliveries = q_deliveries + 1 "
    "WHERE rowid = coalesce("
    "(SELECT rowid FROM tasks WHERE q_workflow = :workflow AND q_due <= :now ORDER BY q_due LIMIT 1), "
    "(SELECT rowid FROM tasks WHERE q_workflow = :workflow AND q_receipt IS NOT NULL "
    "AND q_receipt GLOB '*:*' AND q_due > (julianday('now') - 2440587.5) * 86400.0 "
    "+ CAST(substr(q_receipt, 18) AS REAL) + 1.0 LIMIT 1)) "
    "RETURNING id, q_deliveries, record"
)
_NEXT_DUE = "SELECT min(q_due) FROM tasks WHERE q_workflow = ?"
_EXTEND = (
    "UPDATE tasks SET q_due = :deadline, q_receipt = :receipt "
    "WHERE id = :id AND substr(q_receipt, 1, 16) = :token AND q_due > :now"
)
# In RETURNING, SQLite 3.40 evaluates `column IS NULL` wrongly on this table (always
# false); `typeof(column)` reads the value itself.
_ACK = (
    "UPDATE tasks SET q_workflow = NULL, q_due = NULL, q_receipt = NULL, q_deliveries = 0 "
    "WHERE id = ? AND substr(q_receipt, 1, 16) = ? AND q_due > ? RETURNING typeof(record) = 'null'"
)
_DROP_STUB = "DELETE FROM tasks WHERE id = ? AND record IS NULL AND q_workflow IS NULL"
_RELEASE = (
    "UPDATE tasks SET q_receipt = NULL, q_due = ? "
    "WHERE id = ? AND substr(q_receipt, 1, 16) = ? AND q_due > ?"
)
_QUARANTINE = (
    "INSERT INTO tasks (id, workflow, record, status, version, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET workflow = excluded.workflow, record = excluded.record, "
    "status = excluded.status, version = excluded.version, updated_at = excluded.updated_at"
)


class SQLiteBackend:
    """Task store and queue in one SQLite file: `sqlite:///relative.db`, `sqlite:////abs.db`.

    Options (URL query or keyword): `synchronous` (`normal`, the default, `full` or
    `extra`; see the module docstring) and `busy_timeout` (seconds a write waits for
    another process's lock before failing, default 5). Open it with `async with` or
    `open()`; it can be closed and opened again.
    """

    #: See MAX_PAYLOAD_BYTES.
    max_payload_bytes: int | None = MAX_PAYLOAD_BYTES

    #: Seconds between two cross-process change checks while claimers wait and no wake-up
    #: socket could be bound (see "Waiting in claim" in the module docstring).
    watch_interval: float = 0.05

    #: The same check's interval while a wake-up socket is bound: a safety net for wake-ups
    #: that never came (a writer running an older salvador, a datagram that was dropped).
    safety_net_interval: float = 1.0

    #: Seconds between two checks that the path still names the file this process has open.
    identity_check_interval: float = 1.0

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "normal",
        busy_timeout: float = _DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        raw = os.fspath(path)
        if not raw:
            raise ConfigurationError("the SQLite database path is empty; name a file, e.g. 'salvador.db'")
        if raw == ":memory:" or raw.startswith("file:"):
            raise ConfigurationError(
                f"{raw!r} is not supported: the SQLite backend needs a file that worker processes "
                "share; use memory:// for an in-process backend"
            )
        self.path = os.path.abspath(raw)
        self.synchronous = _checked_synchronous(synchronous)
        self.busy_timeout = _checked_busy_timeout(busy_timeout)
        self._thread: _DatabaseThread | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the database thread
        self._wakeups: dict[str, asyncio.Event] = {}
        # Waiting claimers: (workflow, their wake-up event, PRAGMA data_version after they looked).
        self._waiters: builtins.list[tuple[str, asyncio.Event, int]] = []
        self._watcher: asyncio.Task[None] | None = None
        self._wake_sockets = _WakeSockets(self.path)
        self._cannot_listen = False  # binding a wake-up socket failed: poll instead
        self._ringing: set[str] = set()  # workflows to announce to other processes
        # The file this process opened ((st_dev, st_ino)) and what became of it.
        self._identity: tuple[int, int] | None = None
        self._identity_checked = 0.0
        self._lost: str | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteBackend:
        """The backend for `sqlite:///relative/path.db` or `sqlite:////absolute/path.db`.

        Raises `ConfigurationError` for a URL without a path, with a host, or with an
        unknown, repeated or invalid option.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() != "sqlite":
            raise ConfigurationError(f"{url!r} is not a sqlite:// URL")
        if parts.netloc:
            raise ConfigurationError(
                f"sqlite URL {url!r} names a host ({parts.netloc!r}); SQLite URLs have none: "
                "use sqlite:///relative/path.db or sqlite:////absolute/path.db (three or four slashes)"
            )
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path:
            raise ConfigurationError(
                f"sqlite URL {url!r} has no database path; use e.g. sqlite:///salvador.db "
                "(relative to the working directory) or sqlite:////var/lib/app/salvador.db"
            )
        if parts.fragment:
            raise ConfigurationError(f"sqlite URL {url!r} has a #fragment; remove it (or percent-encode '#')")
        # Values are checked by __init__, which keyword users reach directly too.
        settings = UrlOptions(url, parts.query, options, known=_OPTIONS, kind="sqlite")
        return cls(path, **settings.values)

    def __repr__(self) -> str:
        state = "open" if self._thread is not None else "closed"
        return f"SQLiteBackend({self.path!r}, synchronous={self.synchronous!r}, {state})"

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Open the file (creating it and the schema if needed). Safe to call twice.

        Raises `ConfigurationError` naming the path when it cannot be used (missing or
        unwritable directory, not a database, a newer or foreign schema) and
        `BackendUnavailableError` when another process keeps it locked past `busy_timeout`.
        """
        if self._thread is not None:
            return
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise ConfigurationError(
                f"the SQLite backend needs SQLite {'.'.join(map(str, MIN_SQLITE_VERSION))} or newer "
                f"(for UPDATE ... RETURNING); this Python is linked against SQLite "
                f"{sqlite3.sqlite_version}. Use a Python build with a newer SQLite, or another backend."
            )
        thread = _DatabaseThread(f"salvador-sqlite:{os.path.basename(self.path)}", lambda: self._conn)
        self._thread = thread
        try:
            await thread.call(self._connect, (), alone=True)
        except BaseException:
            self._thread = None
            thread.stop()
            raise

    async def close(self) -> None:
        """Close the connection. Safe to call twice; `open()` works again afterwards."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        self._wake_sockets.close()
        self._cannot_listen = False
        self._ringing.clear()
        self._wake_all()
        try:
            await thread.call(self._disconnect, (), alone=True)
        finally:
            thread.stop()

    async def __aenter__(self) -> SQLiteBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- store ---------------------------------------------------------------------------

    async def create(self, task: Task) -> Task:
        stored, _ = await self._insert(task, queued=False)
        return stored

    async def get(self, task_id: str) -> Task | None:
        return await self._read(self._get_sync, task_id)

    async def update(self, task: Task, expected_version: int) -> Task:
        stored = next_version(task, expected_version)
        params = _fenced_write(stored, expected_version)
        await self._run(self._fenced_sync, _UPDATE, params, task.id, expected_version)
        return stored

    async def list(
        self,
        *,
        workflow: str | None = None,
        status: TaskStatus | Iterable[TaskStatus] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        wanted = statuses_of(status)
        where = ["record IS NOT NULL"]
        params: builtins.list[Any] = []
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        if wanted is not None:
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            params.extend(sorted(s.value for s in wanted))
        return await self._read(self._list_sync, " AND ".join(where), params, limit, cursor)

    async def delete(self, task_id: str) -> bool:
        return await self._run(self._delete_sync, task_id)

    async def purge(self, *, older_than: datetime, statuses: Iterable[TaskStatus]) -> int:
        wanted = sorted(s.value for s in purge_statuses(statuses))
        if not wanted:
            return 0
        sql = (
            "DELETE FROM tasks WHERE rowid IN (SELECT rowid FROM tasks WHERE record IS NOT NULL "
            f"AND status IN ({', '.join('?' * len(wanted))}) AND updated_at < ? LIMIT {_PURGE_BATCH})"
        )
        params = (*wanted, older_than.timestamp())
        total = 0
        # In batches, each its own transaction, so other processes' writes interleave.
        while True:
            deleted = await self._run(self._execute_sync, sql, params)
            total += deleted
            if deleted < _PURGE_BATCH:
                return total

    async def stats(self) -> builtins.list[WorkflowStats]:
        """Counts by workflow and status, the queue's depth and completions per minute, from
        indexes (TaskCounts)."""
        return await self._read(self._stats_sync, time.time())

    def _stats_sync(self, now: float) -> builtins.list[WorkflowStats]:
        conn = self._db()
        found: dict[str, WorkflowStats] = {}
        for workflow, status, count in conn.execute(_COUNT_STATUSES):
            stats = found.setdefault(workflow, WorkflowStats(workflow))
            stats.counts[status] = count
            if TaskStatus(status) in DEAD_LETTER_STATUSES:
                stats.dead_letters += count
        for workflow, due, later, oldest in conn.execute(_COUNT_QUEUE, {"now": now}):
            stats = found.setdefault(workflow, WorkflowStats(workflow))
            stats.queued, stats.delayed = int(due or 0), int(later or 0)
            stats.oldest_wait_seconds = None if oldest is None else max(0.0, now - oldest)
        since = (now // 60 - (COMPLETION_MINUTES - 1)) * 60
        finished: dict[str, builtins.list[tuple[int, int]]] = {}
        for workflow, minute, count in conn.execute(_COUNT_COMPLETIONS, {"since": since}):
            finished.setdefault(workflow, []).append((minute, count))
        for name, stats in found.items():
            stats.completions = completion_buckets(finished.get(name, ()), now)
        return [found[name] for name in sorted(found)]

    async def quarantine(self, task: Task) -> Task:
        stored = next_version(task, task.version)
        params = (
            stored.id, stored.workflow, encode_task(stored), stored.status.value,
            stored.version, stored.updated_at.timestamp(),
        )
        await self._run(self._execute_sync, _QUARANTINE, params)
        return stored

    # -- queue ---------------------------------------------------------------------------

    async def enqueue(self, workflow: str, task_id: str, *, not_before: datetime | None = None) -> None:
        params = {"id": task_id, "workflow": workflow, "due": _due(not_before)}
        await self._run(self._execute_sync, _ENQUEUE, params)
        self._announce(workflow)

    async def claim(self, workflow: str, *, lease: float, wait: float) -> Claim | None:
        claims = await self.claim_many(workflow, 1, lease=lease, wait=wait)
        return claims[0] if claims else None

    async def claim_many(
        self, workflow: str, limit: int, *, lease: float, wait: float
    ) -> builtins.list[Claim]:
        """Up to `limit` leases on due tasks of `workflow`, oldest first, in one transaction
        on the database thread (BatchClaims): one commit for the batch."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(0.0, wait)
        self._listen(loop)
        while True:
            # Taken before looking, so a wake-up during the look is not lost.
            event = self._wakeups.setdefault(workflow, asyncio.Event())
            claims, next_due, data_version = await self._run(self._claim_many_sync, workflow, lease, limit)
            if claims:
                return claims
            now = loop.time()
            if now >= give_up:
                return []
            nap = give_up - now
            if next_due is not None:
                nap = min(nap, max(next_due - time.time(), 0.001))
            waiter = (workflow, event, data_version)
            self._waiters.append(waiter)
            if self._watcher is None:
                self._watcher = asyncio.create_task(self._watch())
            try:
                await asyncio.wait_for(event.wait(), nap)
            except asyncio.TimeoutError:
                pass
            finally:
                self._waiters.remove(waiter)

    async def extend(self, claim: Claim, *, lease: float) -> Claim:
        now = time.time()
        receipt = _receipt(_token(claim.receipt), lease)
        params = {
            "deadline": now + lease, "receipt": receipt, "id": claim.task_id,
            "token": _token(claim.receipt), "now": now,
        }
        if not await self._run(self._execute_sync, _EXTEND, params):
            raise LeaseLostError(claim.task_id, "it expired or was re-delivered")
        return Claim(claim.task_id, claim.workflow, receipt, claim.deliveries, now + lease)

    async def ack(self, claim: Claim) -> None:
        await self._run(self._ack_sync, claim.task_id, _token(claim.receipt))

    async def release(self, claim: Claim, *, delay: float = 0.0) -> None:
        now = time.time()
        params = (now + max(0.0, delay), claim.task_id, _token(claim.receipt), now)
        if not await self._run(self._execute_sync, _RELEASE, params):
            raise LeaseLostError(claim.task_id, "it expired or was re-delivered")
        self._announce(claim.workflow)

    # -- backend ------------------------------------------------------------------------

    async def submit(self, task: Task) -> Task:
        stored, inserted = await self._insert(task, queued=True)
        if inserted:
            self._announce(task.workflow)
        return stored

    async def requeue(self, task: Task, expected_version: int) -> Task:
        stored = next_version(task, expected_version)
        params = _fenced_write(stored, expected_version, due=_due(task.not_before), workflow=task.workflow)
        await self._run(self._fenced_sync, _REQUEUE, params, task.id, expected_version)
        self._announce(task.workflow)
        return stored

    async def settle(self, task: Task, expected_version: int, claim: Claim) -> Task:
        stored = next_version(task, expected_version)
        params = _fenced_write(stored, expected_version, token=_token(claim.receipt))
        await self._run(self._fenced_sync, _SETTLE, params, task.id, expected_version)
        return stored

    # -- running on the database thread ---------------------------------------------------

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` on the database thread; may share a group commit (writes only)."""
        return await self._call(fn, args, alone=False)

    async def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` on the database thread, outside any transaction: never waits for locks."""
        return await self._call(fn, args, alone=True)

    async def _call(self, fn: Callable[..., _T], args: tuple[Any, ...], *, alone: bool) -> _T:
        thread = self._thread
        if thread is None:
            raise BackendNotOpenError(f"SQLite ({self.path})")
        if time.monotonic() - self._identity_checked >= self.identity_check_interval:
            self._check_identity()
        if self._lost is not None:
            raise BackendUnavailableError(self._lost)
        try:
            result: _T = await thread.call(fn, args, alone=alone)
        except sqlite3.Error as exc:
            self._check_identity()
            if self._lost is not None:
                raise BackendUnavailableError(self._lost) from exc
            raise self._failure(exc) from exc
        return result

    def _check_identity(self) -> None:
        """Notice the database file being deleted or replaced under this process: SQLite
        would go on using the unlinked file it has open, unseen by every other process. Then
        log it once, loudly, and fail every further call (see `_lost`)."""
        self._identity_checked = time.monotonic()
        if self._identity is None or self._lost is not None:
            return
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            what = "was deleted (or renamed)"
        except OSError as exc:
            what = f"cannot be checked ({exc.strerror})"
        else:
            if (found.st_dev, found.st_ino) == self._identity:
                return
            what = "was replaced by another file"
        self._lost = (
            f"SQLite database {self.path} {what} while this process had it open: its writes "
            "would go to the old file, which no other process sees, and tasks submitted to the "
            "file now at that path would never reach it. Stopped using it; restart this process "
            "(or close and open the backend) once the right file is in place."
        )
        log.error("%s", self._lost)
        self._wake_all()  # waiting claimers look again, and hear of it

    def _failure(self, exc: sqlite3.Error) -> BackendUnavailableError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return BackendUnavailableError(
                f"SQLite database {self.path} stayed locked by another connection for longer than "
                f"busy_timeout ({self.busy_timeout:g}s): {text}. Another process holds a long write "
                "transaction; find it, or raise busy_timeout (e.g. ?busy_timeout=30)."
            )
        read_only = _read_only_mount(os.path.dirname(self.path))
        if read_only is not None:
            return BackendUnavailableError(
                f"SQLite database {self.path} cannot be written: {text}. Its filesystem "
                f"(mounted at {read_only}) is read-only (EROFS); remount it read-write "
                f"(mount -o remount,rw {read_only}) or move the database to a writable one."
            )
        frozen = _immutable_files(self.path)
        if frozen:
            return BackendUnavailableError(
                f"SQLite database {self.path} cannot be written: {text}. {', '.join(frozen)} "
                f"became immutable (chattr +i); clear the flag (chattr -i {' '.join(frozen)}). "
                "A process that touches an immutable -shm file is killed with SIGBUS."
            )
        if "readonly" in text:
            return BackendUnavailableError(
                f"SQLite database {self.path} cannot be written: {text}. The file, its -wal or "
                "-shm file or its directory became read-only for this process (permissions, "
                "ownership, or chattr +i); make them writable again."
            )
        return BackendUnavailableError(
            f"SQLite database {self.path} failed: {type(exc).__name__}: {text}. Check the disk "
            "(space, permissions) and that the file is on a local filesystem."
        )

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BackendNotOpenError(f"SQLite ({self.path})")
        return self._conn

    def _check_path(self) -> None:
        """Fail early, naming the path, where SQLite would only say 'unable to open'."""
        directory = os.path.dirname(self.path)
        where = f"cannot use the SQLite database {self.path}"
        if not os.path.isdir(directory):
            what = "is not a directory" if os.path.exists(directory) else "does not exist"
            raise ConfigurationError(
                f"{where}: its directory {directory} {what}; create it (mkdir -p {directory}) "
                "or point the URL at another path"
            )
        if os.path.isdir(self.path):
            raise ConfigurationError(
                f"{where}: it is a directory; name a file inside it, e.g. "
                f"sqlite:///{os.path.join(self.path, 'salvador.db')}"
            )
        read_only = _read_only_mount(directory)
        if read_only is not None:
            raise ConfigurationError(
                f"{where}: it is on a read-only filesystem (EROFS; mounted at {read_only}), and "
                "SQLite must write the database and its -wal and -shm files beside it. Remount it "
                f"read-write (mount -o remount,rw {read_only}) or move the database to a writable "
                "filesystem"
            )
        frozen = _immutable_files(self.path)
        if frozen:
            raise ConfigurationError(
                f"{where}: {', '.join(frozen)} immutable (chattr +i), which not even root may "
                f"write; clear the flag (chattr -i {' '.join(frozen)}) or use another file"
            )
        if os.path.exists(self.path) and not os.access(self.path, os.R_OK | os.W_OK):
            raise ConfigurationError(
                f"{where}: this process (uid {os.getuid()}) cannot read and write the file; "
                "fix its permissions (chmod u+rw) or run as its owner"
            )
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigurationError(
                f"{where}: this process (uid {os.getuid()}) cannot write to {directory}, where "
                "SQLite keeps its -wal and -shm files beside the database; fix the directory's "
                "permissions or move the database"
            )

    def _connect(self) -> None:
        self._check_path()
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=True
            )
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the SQLite database {self.path}: {exc}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigurationError(
                    f"SQLite database {self.path} cannot use WAL mode (it stayed in {mode!r}); "
                    "keep the file on a local filesystem (not NFS/SMB), where WAL works"
                )
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # Reads through read(), not a mapping of the file: a mapped page that the file
            # can no longer back kills the process with SIGBUS (the -shm file stays mapped).
            conn.execute("PRAGMA mmap_size = 0")
            self._prepare_schema(conn)
            found = os.stat(self.path)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                if "locked" in str(exc) or "busy" in str(exc):
                    raise self._failure(exc) from None
                raise ConfigurationError(
                    f"cannot use the SQLite database {self.path}: {exc}. If it is not a salvador "
                    "database (or is damaged), point the URL at a new file."
                ) from None
            raise
        self._conn = conn
        self._identity, self._lost = (found.st_dev, found.st_ino), None
        self._identity_checked = time.monotonic()

    def _prepare_schema(self, conn: sqlite3.Connection) -> None:
        # IMMEDIATE: processes opening a new file at once create the schema one at a time.
        with _transaction(conn):
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"SQLite database {self.path} has salvador schema version {found}, newer than "
                    f"this salvador understands ({SCHEMA_VERSION}); upgrade salvador on this machine"
                )
            if found == 0:
                tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
                if tables:
                    raise ConfigurationError(
                        f"SQLite database {self.path} already holds {tables} table(s) but no salvador "
                        "schema version; it belongs to something else: give salvador its own file"
                    )
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(_LEASES_INDEX)
            conn.execute(_COMPLETED_INDEX)
            conn.execute(_WAITING_INDEX)
            _prepare_counts(conn)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _execute_sync(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> int:
        return self._db().execute(sql, params).rowcount

    def _rows_sync(self, sql: str, params: Iterable[Any]) -> builtins.list[Any]:
        return self._db().execute(sql, tuple(params)).fetchall()

    def _get_sync(self, task_id: str) -> Task | None:
        row = self._db().execute(
            "SELECT record FROM tasks WHERE id = ? AND record IS NOT NULL", (task_id,)
        ).fetchone()
        return None if row is None else decode_task(row[0], task_id)

    def _fenced_sync(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any], task_id: str, expected: int
    ) -> None:
        conn = self._db()
        if conn.execute(sql, params).rowcount == 1:
            return
        row = conn.execute(
            "SELECT version FROM tasks WHERE id = ? AND record IS NOT NULL", (task_id,)
        ).fetchone()
        raise ConflictError(task_id, expected, None if row is None else row[0])

    async def _insert(self, task: Task, *, queued: bool) -> tuple[Task, bool]:
        """Store `task` with version 1 (and queue it if `queued`), unless its id or its
        `(workflow, idempotency_key)` exists: then the stored task, unchanged. The flag
        says whether `task` was inserted."""
        stored = task.evolve(version=1)
        row = (
            stored.id, stored.workflow, encode_task(stored), stored.status.value, 1,
            stored.idempotency_key, stored.updated_at.timestamp(),
            stored.workflow if queued else None, _due(stored.not_before) if queued else None,
        )
        existing = await self._run(self._insert_sync, row)
        return (stored, True) if existing is None else (existing, False)

    def _insert_sync(self, row: tuple[Any, ...]) -> Task | None:
        conn = self._db()
        try:
            conn.execute(_INSERT, row)
            return None
        except sqlite3.IntegrityError:
            pass
        # A duplicate (or a queue entry enqueued before its record): sort it out under the
        # write lock, so the row that got in the way cannot change meanwhile.
        task_id, workflow, raw, status, version, key, updated_at = row[:7]
        with _transaction(conn):
            found = None
            if key is not None:
                found = conn.execute(
                    "SELECT id, record FROM tasks WHERE workflow = ? AND idempotency_key = ?",
                    (workflow, key),
                ).fetchone()
            if found is None:
                found = conn.execute(
                    "SELECT id, record FROM tasks WHERE id = ? AND record IS NOT NULL", (task_id,)
                ).fetchone()
            if found is None:
                filled = conn.execute(
                    _FILL_STUB, (workflow, raw, status, version, key, updated_at, task_id)
                ).rowcount
                if not filled:
                    conn.execute(_INSERT, row)
        return None if found is None else decode_task(found[1], found[0])

    def _list_sync(
        self, where: str, params: builtins.list[Any], limit: int, cursor: str | None
    ) -> Page:
        conn = self._db()
        batch = max(limit, 0) + 1
        found: builtins.list[Task] = []
        after = cursor
        while len(found) <= limit:
            if after is None:
                sql = f"SELECT id, record FROM tasks WHERE {where} ORDER BY id LIMIT ?"
                args = [*params, batch]
            else:
                sql = f"SELECT id, record FROM tasks WHERE {where} AND id > ? ORDER BY id LIMIT ?"
                args = [*params, after, batch]
            rows = conn.execute(sql, args).fetchall()
            for task_id, raw in rows:
                try:
                    found.append(decode_task(raw, task_id))
                except (CorruptRecordError, RecordVersionError):
                    continue  # skipped here; the engine dead-letters it when claimed
                if len(found) > limit:
                    break
            if len(rows) < batch:
                break
            after = rows[-1][0]
        page = found[: max(limit, 0)]
        more = len(found) > len(page)
        return Page(page, page[-1].id if more and page else None)

    def _delete_sync(self, task_id: str) -> bool:
        rows = self._db().execute(
            "DELETE FROM tasks WHERE id = ? RETURNING typeof(record) != 'null'", (task_id,)
        ).fetchall()
        return bool(rows and rows[0][0])

    def _claim_sync(self, workflow: str, lease: float) -> tuple[Claim | None, float | None, int]:
        conn = self._db()
        now = time.time()
        receipt = _receipt(secrets.token_hex(8), lease)
        params = {"receipt": receipt, "deadline": now + lease, "workflow": workflow, "now": now}
        rows = conn.execute(_CLAIM, params).fetchall()
        if rows:
            task_id, deliveries, raw = rows[0]
            task = _readable(raw, task_id)
            return Claim(task_id, workflow, receipt, deliveries, now + lease, task), None, 0
        next_due = conn.execute(_NEXT_DUE, (workflow,)).fetchone()[0]
        return None, next_due, conn.execute("PRAGMA data_version").fetchone()[0]

    def _claim_many_sync(
        self, workflow: str, lease: float, limit: int
    ) -> tuple[builtins.list[Claim], float | None, int]:
        """Up to `limit` claims, each made as `_claim_sync` makes one (so oldest first, with
        its clock check), all in one transaction; with none due, what `_claim_sync` says
        about the next due time."""
        if limit == 1:
            claim, next_due, data_version = self._claim_sync(workflow, lease)
            return ([] if claim is None else [claim]), next_due, data_version
        claims: builtins.list[Claim] = []
        with _transaction(self._db()):
            while len(claims) < limit:
                claim, next_due, data_version = self._claim_sync(workflow, lease)
                if claim is None:
                    break
                claims.append(claim)
        return claims, (None if claims else next_due), data_version

    def _ack_sync(self, task_id: str, token: str) -> None:
        conn = self._db()
        rows = conn.execute(_ACK, (task_id, token, time.time())).fetchall()
        if not rows:
            raise LeaseLostError(task_id, "it expired or was re-delivered")
        if rows[0][0]:
            conn.execute(_DROP_STUB, (task_id,))

    def _data_version_sync(self) -> int:
        return int(self._db().execute("PRAGMA data_version").fetchone()[0])

    # -- waking claimers ----------------------------------------------------------------

    def _wake(self, workflow: str) -> None:
        event = self._wakeups.pop(workflow, None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        wakeups, self._wakeups = self._wakeups, {}
        for event in wakeups.values():
            event.set()

    def _announce(self, workflow: str) -> None:
        """`workflow` has a task to claim: wake this object's claimers now and, once this
        turn of the event loop is over (so a burst of commits rings once), other processes'."""
        self._wake(workflow)
        if not self._ringing:
            asyncio.get_running_loop().call_soon(self._ring)
        self._ringing.add(workflow)

    def _ring(self) -> None:
        workflows, self._ringing = self._ringing, set()
        if workflows and self._thread is not None:
            self._wake_sockets.ring(workflows)

    def _rung(self, workflows: set[str] | None) -> None:
        """Another process made tasks of `workflows` (None: of any workflow) claimable."""
        if workflows is None:
            self._wake_all()
        else:
            for workflow in workflows:
                self._wake(workflow)

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind this object's wake-up socket (once; again if used from another loop)."""
        if self._cannot_listen or self._wake_sockets.loop is loop:
            return
        self._wake_sockets.close()
        try:
            self._wake_sockets.listen(loop, self._rung)
        except OSError as exc:
            self._cannot_listen = True
            log.warning(
                "SQLite database %s: no wake-up socket in %s (%s); claimers learn of other "
                "processes' tasks by polling every %gs instead", self.path,
                self._wake_sockets.directory, exc.strerror or exc, self.watch_interval,
            )

    async def _watch(self) -> None:
        """While claimers wait, look for commits of other processes since each claimer last
        looked, and wake those claimers: every `watch_interval` when no wake-up socket is
        bound, else every `safety_net_interval`. A claimer is woken at most once an interval
        this way, however busy other processes are."""
        try:
            while self._waiters:
                listening = self._wake_sockets.loop is not None
                await asyncio.sleep(self.safety_net_interval if listening else self.watch_interval)
                current = await self._read(self._data_version_sync)
                for workflow, event, seen in builtins.list(self._waiters):
                    if seen != current:
                        if self._wakeups.get(workflow) is event:
                            del self._wakeups[workflow]
                        event.set()
        except BackendUnavailableError:
            self._wake_all()  # closed, or the file is unusable: let the claimers hear it
        finally:
            if self._watcher is asyncio.current_task():
                self._watcher = None


class _WakeSockets:
    """Wake-ups between processes that share one database file, through Unix datagram
    sockets in the directory `<database>-wake/`.

    A process whose claimers wait binds one socket there (`listen`); a process that made a
    task claimable sends each other socket a datagram holding the workflow's name (`ring`),
    and the listener wakes that workflow's claimers. Nothing runs while no one rings. The
    directory listing is cached and read again when the directory's mtime changes; a socket
    whose owner is gone (killed, say) answers ECONNREFUSED and is unlinked by the first
    sender to notice. Without AF_UNIX, or where the directory cannot be created or bound
    in, `listen` says so and the backend falls back to polling `PRAGMA data_version`.
    """

    #: Longest socket path the kernel takes (sun_path is 108 bytes with its NUL on Linux).
    _MAX_ADDRESS = 107
    #: Most bytes of a workflow name sent; a longer name is sent empty, which wakes all.
    _MAX_NAME = 200
    #: A listing younger than this after the directory's mtime may have missed a change
    #: stamped with the same coarse mtime ("racy", as git calls it), so it is read again.
    _RACY_NS = 50_000_000
    #: A listing is read again at least this often, whatever the mtime says.
    _MAX_AGE_NS = 1_000_000_000

    def __init__(self, database: str) -> None:
        self.directory = database + "-wake"
        self._database = database
        self._dir_fd: int | None = None
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._name: str | None = None
        self._sender: socket.socket | None = None
        self._peers: builtins.list[str] = []
        self._listed: tuple[int, int] | None = None  # (directory mtime, when listed), in ns

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this process's socket wakes claimers on; None while not bound."""
        return self._loop

    def listen(self, loop: asyncio.AbstractEventLoop, rung: Callable[[set[str] | None], None]) -> None:
        """Bind this process's socket and call `rung(workflows)` (None: all) from `loop`
        whenever datagrams arrive. Raises OSError when it cannot; nothing is left bound."""
        if not hasattr(socket, "AF_UNIX"):
            raise OSError(errno.EAFNOSUPPORT, "this platform has no Unix domain sockets")
        directory_mode, socket_mode = _wake_modes(self._database)
        try:
            os.mkdir(self.directory, 0o700)
            os.chmod(self.directory, directory_mode)  # exactly, whatever the umask
        except FileExistsError:
            pass
        name = f"{os.getpid()}.{secrets.token_hex(3)}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            listener.setblocking(False)
            listener.bind(self._address(name))
            os.chmod(name, socket_mode, dir_fd=self._directory_fd())
            loop.add_reader(listener.fileno(), self._receive, listener, rung)
        except BaseException:
            listener.close()
            self._unlink(name)
            raise
        self._listener, self._loop, self._name = listener, loop, name

    def ring(self, workflows: Iterable[str]) -> None:
        """Tell every other listening process that `workflows` have tasks to claim."""
        peers = self._current_peers()
        if not peers:
            return
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        payloads = [w.encode() if len(w.encode()) <= self._MAX_NAME else b"" for w in workflows]
        for name in peers:
            if name == self._name:
                continue
            try:
                for payload in payloads:
                    self._sender.sendto(payload, self._address(name))
            except ConnectionRefusedError:
                self._unlink(name)  # its process is gone (SIGKILL leaves the file behind)
                self._listed = None
            except FileNotFoundError:
                self._listed = None
            except OSError:
                pass  # full (it has wake-ups pending already), or not ours to write to

    def close(self) -> None:
        """Unbind and unlink this process's socket; the directory stays for the others."""
        listener, self._listener = self._listener, None
        if listener is not None:
            loop, self._loop = self._loop, None
            if loop is not None and not loop.is_closed():
                loop.remove_reader(listener.fileno())
            listener.close()
        if self._name is not None:
            self._unlink(self._name)
            self._name = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        self._listed = None

    @staticmethod
    def _receive(listener: socket.socket, rung: Callable[[set[str] | None], None]) -> None:
        workflows: set[str] | None = set()
        while True:
            try:
                payload = listener.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if workflows is not None:
                if payload:
                    workflows.add(payload.decode(errors="replace"))
                else:
                    workflows = None
        rung(workflows)

    def _current_peers(self) -> builtins.list[str]:
        try:
            fd = self._directory_fd()
            mtime = os.stat(fd).st_mtime_ns
        except OSError:
            return []
        now = time.time_ns()
        listed = self._listed
        stale = listed is None or listed[0] != mtime or now - listed[1] > self._MAX_AGE_NS
        if stale or listed is None or listed[1] - mtime < self._RACY_NS:
            try:
                self._peers = os.listdir(fd)
            except OSError:
                return []
            self._listed = (mtime, now)
        return self._peers

    def _directory_fd(self) -> int:
        if self._dir_fd is None:
            self._dir_fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        return self._dir_fd

    def _address(self, name: str) -> str:
        """The path to bind or send to; through /proc/self/fd when the real one is too long."""
        path = os.path.join(self.directory, name)
        if len(os.fsencode(path)) <= self._MAX_ADDRESS:
            return path
        return f"/proc/self/fd/{self._directory_fd()}/{name}"

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._directory_fd())
        except OSError:
            pass


def _wake_modes(database: str) -> tuple[int, int]:
    """Permission bits of the wake-up directory and sockets: whoever may write the database
    (owner, group, others) may list the directory and send to the sockets in it."""
    try:
        writers = os.stat(database).st_mode & 0o222 | 0o200
    except OSError:
        writers = 0o200
    directory = sum(0o7 << shift for shift in (6, 3, 0) if writers & (0o2 << shift))
    return directory, writers | 0o400


class _Call(NamedTuple):
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    alone: bool


class _DatabaseThread:
    """The one thread that owns a backend's connection. Runs calls in arrival order and
    commits the writes that queued up meanwhile together (see "Group commit" above)."""

    _STOP = object()

    def __init__(self, name: str, connection: Callable[[], sqlite3.Connection | None]) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._connection = connection  # the backend's, read on this thread only
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], *, alone: bool) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self._calls.put(_Call(fn, args, future, alone))
        return future

    def stop(self) -> None:
        self._calls.put(self._STOP)

    def _serve(self) -> None:
        held: Any = None  # a call taken off the queue that could not join the last group
        while True:
            first = held if held is not None else self._calls.get()
            held = None
            if first is self._STOP:
                return
            group = [first]
            while not first.alone and len(group) < _GROUP_MAX:
                try:
                    more = self._calls.get_nowait()
                except queue.Empty:
                    break
                if more is self._STOP or more.alone:
                    held = more
                    break
                group.append(more)
            outcomes = self._run_one(first) if len(group) == 1 else self._run_group(group)
            _deliver(group, outcomes)

    @staticmethod
    def _run_one(call: _Call) -> builtins.list[tuple[bool, Any]]:
        try:
            return [(True, call.fn(*call.args))]
        except BaseException as exc:
            return [(False, exc)]

    def _run_group(self, group: builtins.list[_Call]) -> builtins.list[tuple[bool, Any]]:
        db = self._connection()
        if db is None:
            return [outcome for call in group for outcome in self._run_one(call)]
        try:
            db.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            return [(False, exc)] * len(group)
        outcomes: builtins.list[tuple[bool, Any]] = []
        for call in group:
            try:
                outcomes.append((True, call.fn(*call.args)))
            except BaseException as exc:
                if isinstance(exc, sqlite3.Error) and not db.in_transaction:
                    return [(False, exc)] * len(group)  # SQLite rolled the whole group back
                outcomes.append((False, exc))
        try:
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return [(False, exc)] * len(group)
        return outcomes


def _deliver(group: builtins.list[_Call], outcomes: builtins.list[tuple[bool, Any]]) -> None:
    loops: dict[asyncio.AbstractEventLoop, builtins.list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for call, (ok, value) in zip(group, outcomes, strict=True):
        loops.setdefault(call.future.get_loop(), []).append((call.future, ok, value))
    for loop, results in loops.items():
        try:
            loop.call_soon_threadsafe(_settle_futures, results)
        except RuntimeError:
            pass  # that event loop is closed: nobody is waiting any more


def _settle_futures(results: builtins.list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():
            continue  # the caller gave up (cancelled); the call ran all the same
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Make the body atomic: a savepoint inside a group commit, else its own transaction."""
    if conn.in_transaction:
        conn.execute("SAVEPOINT salvador")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO salvador")
                conn.execute("RELEASE salvador")
            raise
        conn.execute("RELEASE salvador")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _prepare_counts(conn: sqlite3.Connection) -> None:
    """Make `task_counts` and its triggers, and count what is stored, unless the file has
    them. Runs in the schema transaction (BEGIN IMMEDIATE), so no write comes between the
    count and the triggers taking over, and the table never exists without them."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'task_counts'").fetchone():
        return
    conn.execute(_COUNTS_TABLE)
    conn.execute(_COUNTS_FILL)
    for trigger in _COUNTS_TRIGGERS:
        conn.execute(trigger)


def _fenced_write(stored: Task, expected_version: int, **extra: Any) -> dict[str, Any]:
    """Named parameters of a fenced write of `stored` (`_UPDATE`, `_SETTLE`, `_REQUEUE`)."""
    return {
        "record": encode_task(stored), "status": stored.status.value, "version": stored.version,
        "updated_at": stored.updated_at.timestamp(), "id": stored.id, "expected": expected_version,
        **extra,
    }


def _receipt(token: str, lease: float) -> str:
    """A lease's receipt: a random token (16 hex digits) that names it, and the lease
    granted, in seconds, which the claim's clock check reads back (see _CLAIM)."""
    return f"{token}:{float(lease)!r}"


def _token(receipt: str) -> str:
    """The part of a receipt that names the lease."""
    return receipt[:16]


def _due(not_before: datetime | None) -> float:
    return time.time() if not_before is None else not_before.timestamp()


def _read_only_mount(directory: str) -> str | None:
    """The mount point of `directory` if its filesystem is mounted read-only, else None."""
    try:
        if not os.statvfs(directory).f_flag & os.ST_RDONLY:
            return None
        device = os.stat(directory).st_dev
    except (OSError, AttributeError):
        return None  # AttributeError: no statvfs on this platform
    mount = os.path.abspath(directory)
    while mount != os.path.dirname(mount):
        parent = os.path.dirname(mount)
        try:
            if os.stat(parent).st_dev != device:
                break
        except OSError:
            break
        mount = parent
    return mount


#: Linux's FS_IOC_GETFLAGS ioctl and its FS_IMMUTABLE_FL bit (chattr +i).
_FS_IOC_GETFLAGS = 0x80086601
_FS_IMMUTABLE_FL = 0x10


def _immutable_files(database: str) -> builtins.list[str]:
    """Which of the database, its -wal and its -shm file are flagged immutable (Linux)."""
    try:
        import fcntl
    except ImportError:
        return []
    found = []
    for path in (database, database + "-wal", database + "-shm"):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            flags = int.from_bytes(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8)), sys.byteorder)
        except OSError:
            flags = 0  # a filesystem without these flags
        finally:
            os.close(fd)
        if flags & _FS_IMMUTABLE_FL:
            found.append(path)
    return found


def _readable(raw: bytes | None, task_id: str) -> Task | None:
    """The decoded record, or None for one the engine must read (and handle) itself."""
    if raw is None:
        return None
    try:
        return decode_task(raw, task_id)
    except (CorruptRecordError, RecordVersionError):
        return None


def _checked_synchronous(value: object) -> str:
    mode = str(value).strip().lower()
    if mode not in _SYNCHRONOUS:
        raise ConfigurationError(
            f"sqlite option synchronous={value!r} is not one of {', '.join(_SYNCHRONOUS)} "
            "(normal: safe against process crashes; full: also against power loss)"
        )
    return mode


def _checked_busy_timeout(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"sqlite option busy_timeout={value!r} is not a number of seconds"
        ) from None
    if not 0 <= seconds <= _MAX_BUSY_TIMEOUT:
        hint = " (it is in seconds, not milliseconds)" if seconds > _MAX_BUSY_TIMEOUT else ""
        raise ConfigurationError(
            f"sqlite option busy_timeout={value!r} must be between 0 and {_MAX_BUSY_TIMEOUT:g} "
            f"seconds{hint}"
        )
    return seconds
