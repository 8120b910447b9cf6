"""One `Backend` face over a separate store and queue: the engine always talks to one object.

Records in one place and delivery in another (split URLs, a third-party store that
implements only the two protocols, NATS with records in a KV bucket and delivery in a
stream) means two writes where an atomic backend makes one. `SplitBackend` does them in
the order that keeps every crash safe, and owns the repair of the one gap left:

- submit: `create`, then `enqueue`. A crash between them leaves a stored, pending task that
  no queue knows (an *orphan*). Submitting again with the same idempotency key repairs it at
  once (a duplicate that never started is enqueued again; `enqueue` is idempotent).
- requeue: `update`, then `enqueue`; the same gap (the caller saw its `requeue` fail or
  crash), repaired by `repair_orphans`.
- settle: `update`, then `ack`. A crash between leaves the lease to expire; whoever gets the
  task next finds it terminal and acks it. Nothing to repair.
- a retry or a release on shutdown writes the record, then releases the claim; a crash between
  leaves the lease to expire, and the task comes back as if released. Nothing to repair.

`repair_orphans` is the safety net for producers that crashed and never retried: each call
reads one page of pending tasks (`page_size`), continuing where the previous call stopped and
starting over at the end, and enqueues those that never started and have not changed for a
lease. Its cost per call is bounded whatever the store holds (one `list` of one page, and an
`enqueue` per never-started task on it), as long as the store's `list` reads a page through
an index. The bound is paid in latency: a full pass over N pending tasks (queued or not)
takes ceil(N / `page_size`) calls, and a worker, calling it once per upkeep interval, finds
an orphan within one pass after it is `older_than` old, or two if the cursor went by it while
it was younger: at most 2 * ceil(N / `page_size`) intervals (bench/split_repair.py measures a
call; docs/writing-a-backend.md works the figures out).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from salvador_core.errors import LeaseLostError
from salvador_core.protocols import BatchClaims, TaskQueue, TaskStore
from salvador_core.task import Claim, Page, Task, TaskStatus, utcnow

log = logging.getLogger("salvador")


class SplitBackend:
    """`store` and `queue` composed into the `Backend` protocol the engine talks to."""

    #: Pending tasks read per `repair_orphans` call.
    page_size = 500

    #: The queue's own `claim_many`, set only when the queue has one (`BatchClaims`): the
    #: worker asks `isinstance(backend, BatchClaims)`, so a split backend must offer batch
    #: claims exactly when its queue does (a stand-in looping over `claim` would make the
    #: worker hold every free slot while it waits for one task).
    claim_many: Callable[..., Awaitable[builtins.list[Claim]]]

    def __init__(self, store: TaskStore, queue: TaskQueue) -> None:
        self.store = store
        self.queue = queue
        if isinstance(queue, BatchClaims):
            self.claim_many = queue.claim_many
        self.max_payload_bytes: int | None = getattr(store, "max_payload_bytes", None)
        self._same = queue is store  # type: ignore[comparison-overlap]
        self._cursor: str | None = None  # where the next repair pass goes on

    def __repr__(self) -> str:
        return f"SplitBackend(store={self.store!r}, queue={self.queue!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        await self.store.open()
        if not self._same:
            await self.queue.open()

    async def close(self) -> None:
        if not self._same:
            await self.queue.close()
        await self.store.close()

    # -- the store ---------------------------------------------------------------------------

    async def create(self, task: Task) -> Task:
        return await self.store.create(task)

    async def get(self, task_id: str) -> Task | None:
        return await self.store.get(task_id)

    async def update(self, task: Task, expected_version: int) -> Task:
        return await self.store.update(task, expected_version)

    async def list(
        self,
        *,
        workflow: str | None = None,
        status: TaskStatus | Iterable[TaskStatus] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        return await self.store.list(workflow=workflow, status=status, limit=limit, cursor=cursor)

    async def delete(self, task_id: str) -> bool:
        return await self.store.delete(task_id)

    async def purge(self, *, older_than: datetime, statuses: Iterable[TaskStatus]) -> int:
        return await self.store.purge(older_than=older_than, statuses=statuses)

    async def quarantine(self, task: Task) -> Task:
        return await self.store.quarantine(task)

    # -- the queue ---------------------------------------------------------------------------

    async def enqueue(self, workflow: str, task_id: str, *, not_before: datetime | None = None) -> None:
        await self.queue.enqueue(workflow, task_id, not_before=not_before)

    async def claim(self, workflow: str, *, lease: float, wait: float) -> Claim | None:
        return await self.queue.claim(workflow, lease=lease, wait=wait)

    async def extend(self, claim: Claim, *, lease: float) -> Claim:
        return await self.queue.extend(claim, lease=lease)

    async def ack(self, claim: Claim) -> None:
        await self.queue.ack(claim)

    async def release(self, claim: Claim, *, delay: float = 0.0) -> None:
        await self.queue.release(claim, delay=delay)

    # -- the two-part transitions ------------------------------------------------------------

    async def submit(self, task: Task) -> Task:
        stored = await self.store.create(task)
        if stored.id == task.id or _never_started(stored):
            # A crash right before this enqueue leaves an orphan; an idempotent resubmit (the
            # second branch) or `repair_orphans` queues it.
            await self.queue.enqueue(stored.workflow, stored.id, not_before=stored.not_before)
        return stored

    async def requeue(self, task: Task, expected_version: int) -> Task:
        stored = await self.store.update(task, expected_version)
        await self.queue.enqueue(stored.workflow, stored.id, not_before=stored.not_before)
        return stored

    async def settle(self, task: Task, expected_version: int, claim: Claim) -> Task:
        stored = await self.store.update(task, expected_version)
        try:
            await self.queue.ack(claim)
        except LeaseLostError:
            pass  # the record is settled; whoever holds the new lease acks it on sight
        return stored

    # -- repair ------------------------------------------------------------------------------

    async def repair_orphans(self, *, workflows: Iterable[str], older_than: float) -> int:
        """Enqueue the never-started pending tasks of `workflows` on the next page that have
        not changed for `older_than` seconds. Returns how many were enqueued (already queued
        ones included: `enqueue` is idempotent and cannot tell)."""
        names = set(workflows)
        cutoff = utcnow() - timedelta(seconds=older_than)
        page = await self.store.list(status=TaskStatus.PENDING, limit=self.page_size, cursor=self._cursor)
        self._cursor = page.cursor
        enqueued = 0
        for task in page.tasks:
            if task.workflow in names and task.updated_at < cutoff and _never_started(task):
                await self.queue.enqueue(task.workflow, task.id, not_before=task.not_before)
                enqueued += 1
        return enqueued


def _never_started(task: Task) -> bool:
    """Pending and not taken by a worker since it was submitted or requeued: only such a
    task can be an orphan (every other pending state is written by a worker holding a
    claim, whose expiry brings the task back)."""
    return task.status is TaskStatus.PENDING and task.attempt == 0 and task.owner is None


def compose(store: Any, queue: Any = None) -> Any:
    """What the engine talks to: `store` itself when it is one atomic `Backend` holding both
    halves, else a `SplitBackend` over the two (or over the one object for both)."""
    from salvador_core.protocols import Backend

    if queue is None or queue is store:
        if isinstance(store, Backend):
            return store
        shortcuts = ("submit", "requeue", "settle")
        missing = [name for name in shortcuts if not callable(getattr(store, name, None))]
        if len(missing) < len(shortcuts):
            # One or two of the three: surely meant to be atomic, and it would be used as two
            # writes each time without a word. (None of them: a plain store and queue.)
            log.warning(
                "%s has %s but no %s: the engine uses its atomic shortcuts only when all three "
                "are there, so it runs on the split path (two writes per step) and never calls "
                "them; add %s (docs/writing-a-backend.md)",
                type(store).__name__,
                " and ".join(n for n in shortcuts if n not in missing),
                " or ".join(missing),
                " and ".join(missing),
            )
        return SplitBackend(store, store)
    return SplitBackend(store, queue)
