"""The two boundaries a backend implements: `TaskStore` (records) and `TaskQueue` (delivery).

Everything else (steps, retries, compensation, cancellation, dead letters) lives in the
engine, above these protocols, once. The conformance suite in `salvador_core.testing`
holds every backend to the contracts written in these docstrings.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from salvador_core.task import Claim, Page, Task, TaskStatus, WorkflowStats


@runtime_checkable
class TaskStore(Protocol):
    """Durable task records with compare-and-set updates."""

    async def open(self) -> None:
        """Connect and prepare (create tables, load scripts). Safe to call twice."""

    async def close(self) -> None:
        """Release connections. Safe to call twice; the store may be opened again."""

    async def create(self, task: Task) -> Task:
        """Insert `task` (with `version` 1) and return what is stored.

        If a task with the same `(workflow, idempotency_key)` exists, nothing is written and
        the existing task is returned unchanged; callers compare ids to tell. This holds
        under concurrent duplicate creates: exactly one wins.
        """

    async def get(self, task_id: str) -> Task | None:
        """The stored task, or None. Raises `CorruptRecordError` (with the raw bytes) for a
        record that cannot be decoded, `RecordVersionError` for one from a newer salvador."""

    async def update(self, task: Task, expected_version: int) -> Task:
        """Replace the stored task with `task` if its version is still `expected_version`.

        Returns the stored task with `version = expected_version + 1` and `updated_at` set
        by the store. Raises `ConflictError` when the stored version differs or the task is
        gone; then nothing is written. This is the fence every engine write goes through.
        """

    async def list(
        self,
        *,
        workflow: str | None = None,
        status: TaskStatus | Iterable[TaskStatus] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Tasks in ascending id (creation) order, filtered by workflow and status.

        `cursor` is the value returned with the previous page. Corrupt records are skipped
        here (the engine dead-letters them when they are claimed).
        """

    async def delete(self, task_id: str) -> bool:
        """Remove the record (and any queue entry). True if something was removed."""

    async def purge(self, *, older_than: datetime, statuses: Iterable[TaskStatus]) -> int:
        """Delete tasks in `statuses` (terminal ones only) last updated before `older_than`.

        Returns how many were deleted. Non-terminal statuses are refused with ValueError.
        """

    async def quarantine(self, task: Task) -> Task:
        """Overwrite an unreadable record with `task` (a failed, dead-lettered stand-in
        that keeps the raw bytes as its body), without a version check: a record whose
        version cannot be read cannot be compared. Returns the stored task."""


@runtime_checkable
class TaskQueue(Protocol):
    """Delivery of task ids to workers under leases."""

    async def open(self) -> None:
        """Connect and prepare. Safe to call twice."""

    async def close(self) -> None:
        """Release connections. Safe to call twice."""

    async def enqueue(self, workflow: str, task_id: str, *, not_before: datetime | None = None) -> None:
        """Make `task_id` claimable for `workflow`, no earlier than `not_before`.

        Idempotent per task id: a task that is already queued, delayed or leased is not
        queued twice. A task waiting (not leased) for a due time later than `not_before`
        (None: now) is moved earlier to it, never later: a task cancelled while delayed an
        hour and then run again must not wait out the old hour.
        """

    async def claim(self, workflow: str, *, lease: float, wait: float) -> Claim | None:
        """Lease the next due task of `workflow`, waiting up to `wait` seconds for one.

        Waiting does not busy-poll the backend: an idle wait costs about nothing until an
        enqueue or a due time wakes it. The same task is never leased to two claimers at
        once. A lease not extended or acked within `lease` seconds (on the backend's clock)
        expires and the task becomes claimable again, with `deliveries` increased. Returns
        None when nothing became due within `wait`.

        Oldest due first: one claimer gets due tasks in the order they became due, so no
        task waits behind tasks queued after it. Tasks enqueued without a delay come in
        enqueue order; a delayed task comes in the order of its due time, no later than
        the first claim made after it is due.
        """

    async def extend(self, claim: Claim, *, lease: float) -> Claim:
        """Renew the lease for `lease` seconds from now (the heartbeat).

        Raises `LeaseLostError` when the lease already expired or another claim replaced it.
        """

    async def ack(self, claim: Claim) -> None:
        """The task is finished with: it is never delivered again.

        Raises `LeaseLostError`, changing nothing, when `claim` is no longer the current
        lease (the task was re-delivered to someone else meanwhile).
        """

    async def release(self, claim: Claim, *, delay: float = 0.0) -> None:
        """Give the task back, claimable again after `delay` seconds (retry, shutdown).

        The delay runs on the queue's own clock and is not a lease: a delayed task is held
        by no one. Raises `LeaseLostError`, changing nothing, for a stale claim.
        """


@runtime_checkable
class Backend(TaskStore, TaskQueue, Protocol):
    """A store and queue in one backend, which can make two-part transitions atomic.

    Whether the engine uses these depends only on the three methods (with the two
    protocols'): nothing else can switch the atomic path off. Any store may also declare
    `max_payload_bytes` (an int, or None for no limit of its own): the engine then enforces
    the smaller of it and its own limit. Anything that is not a `Backend` is composed into
    one by `salvador_core.split.SplitBackend`.
    """

    async def submit(self, task: Task) -> Task:
        """`create` and `enqueue` in one atomic step (nothing is enqueued for a duplicate).

        After it returns the task is stored and will be delivered; a crash before it
        returns leaves either both or neither.
        """

    async def requeue(self, task: Task, expected_version: int) -> Task:
        """`update` (fenced as there) and a fresh queue entry in one atomic step; used to
        run a failed, compensated or cancelled task again. Raises `ConflictError` and
        writes nothing on a stale version.

        Unlike `enqueue`, it makes the task claimable now (or at `task.not_before` if set)
        whatever lease or delay exists: any current lease is voided, so an `ack`, `extend`
        or `release` from a claim made before the requeue raises `LeaseLostError` and
        changes nothing, and a `settle` from such a claim writes the record only if its
        version fence passes and never removes the new queue entry; an earlier due time is
        replaced. The task is queued once, never twice. (A worker that claimed a cancelled
        task acks it; that ack must not remove the entry of a requeue that came between.)
        """

    async def settle(self, task: Task, expected_version: int, claim: Claim) -> Task:
        """A run's final write and its `ack` in one atomic step (one round trip if possible).

        The write is fenced exactly as in `update` (`ConflictError`, nothing written, on a
        stale version). If `claim` is still the current lease the task then leaves the queue
        for good; if the lease was lost meanwhile the record is written all the same and no
        error is raised: whoever holds the new lease finds a terminal task and acks it.
        """


@runtime_checkable
class BatchClaims(Protocol):
    """Optional: a queue that can lease several tasks in one round trip offers this. The
    worker then claims as many tasks as it has free slots in one call, instead of one call
    per slot; it never asks for more than it can start at once, so no batch-claimed task
    waits out part of its lease unrun. The conformance suite holds it to `claim`'s contract."""

    async def claim_many(self, workflow: str, limit: int, *, lease: float, wait: float) -> list[Claim]:
        """Up to `limit` (>= 1) leases on due tasks of `workflow` in one go, oldest first;
        waits up to `wait` seconds for the first; [] when none came. Each claim is
        exactly what `claim` would have returned for that task. A `limit` below 1 raises
        `ValueError` naming it."""


@runtime_checkable
class TransactionalSubmit(Protocol):
    """Optional: store a task on the caller's own connection, inside its open transaction
    (the outbox pattern). `Engine.submit(..., connection=conn)` uses it; the core protocols
    above know nothing of connections."""

    async def submit_in(self, connection: Any, task: Task) -> Task:
        """As `Backend.submit`, but written through `connection` in its current transaction:
        the task exists, and is delivered, only if that transaction commits (workers are
        woken when it does). Raises `TypeError` for a connection of a kind it cannot use."""


@runtime_checkable
class TaskCounts(Protocol):
    """Optional: a backend that can count without reading every record (an index, a
    counter) offers this; `salvador stats`, the dashboard's overview and the metrics of
    queue depth use it instead of walking the listing, so its cost must not grow with the
    tasks stored. The conformance suite holds its figures to the listing's."""

    async def stats(self) -> list[WorkflowStats]:
        """One entry per workflow that has tasks, as `salvador stats` prints them.

        `counts` and `dead_letters` agree with what `list` shows (records it cannot decode
        may be counted); `queued` counts pending tasks that are due and not leased, `delayed`
        pending tasks due later; `oldest_wait_seconds` is None exactly when nothing is
        queued. `completions` has `COMPLETION_MINUTES` entries: a task completed now counts
        in the last one (the previous one if the minute turns meanwhile). A backend may
        count completions from the completed tasks it stores (a purged one then drops
        out) or as they happen (it stays counted for the hour)."""
