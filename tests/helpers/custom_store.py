"""A third-party backend, written the way an outside user would: public API only.

`DictBackend` keeps records and a queue in plain dicts. It implements `TaskStore` and
`TaskQueue` but not the atomic `Backend` shortcuts, so the engine drives it through the
split path (create, then enqueue; update, then ack). It exists to prove that the
conformance suite works from outside the package: tests/test_conformance_custom.py runs
the whole suite against it.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from salvador_core import (
    Claim,
    ConflictError,
    LeaseLostError,
    Page,
    Task,
    TaskStatus,
    decode_task,
    encode_task,
)
from salvador_core.backends.memory import MemoryBackend

TERMINAL = {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.COMPENSATED}


#: Enqueue order, to break ties between entries due at the same instant.
_order = itertools.count()


@dataclass
class Entry:
    """A queued task: due at `due` (epoch seconds); leased to `receipt` until `due` if set.

    `due` is when the task became (or becomes) claimable: its enqueue time, its
    `not_before`, the end of a release delay or of a lease. Claims take the smallest
    `(due, seq)` first, so tasks come out oldest due first.
    """

    workflow: str
    due: float
    deliveries: int = 0
    receipt: str | None = None
    seq: int = field(default_factory=lambda: next(_order))


class DictBackend:
    """Records and delivery in two dicts; one event loop, so no locks are needed."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        self.keys: dict[tuple[str, str], str] = {}
        self.queue: dict[str, Entry] = {}
        # Set (and replaced) whenever something may have become claimable. An Event, not a
        # Condition: a claim cancelled while waiting must leave no lock to release.
        self.changed = asyncio.Event()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- TaskStore ---------------------------------------------------------------------

    async def create(self, task: Task) -> Task:
        key = (task.workflow, task.idempotency_key) if task.idempotency_key else None
        if key in self.keys:
            return decode_task(self.records[self.keys[key]])
        stored = task.evolve(version=1)
        self.records[task.id] = encode_task(stored)
        if key:
            self.keys[key] = task.id
        return stored

    async def get(self, task_id: str) -> Task | None:
        raw = self.records.get(task_id)
        return None if raw is None else decode_task(raw, task_id)

    async def update(self, task: Task, expected_version: int) -> Task:
        current = await self.get(task.id)
        if current is None or current.version != expected_version:
            raise ConflictError(task.id, expected_version, current and current.version)
        stored = task.evolve(version=expected_version + 1, updated_at=datetime.now(timezone.utc))
        self.records[task.id] = encode_task(stored)
        return stored

    async def list(
        self,
        *,
        workflow: str | None = None,
        status: TaskStatus | Iterable[TaskStatus] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        wanted = {status} if isinstance(status, (TaskStatus, str)) else status
        wanted = None if wanted is None else {TaskStatus(s) for s in wanted}
        found = []
        for task_id in sorted(i for i in self.records if cursor is None or i > cursor):
            try:
                task = decode_task(self.records[task_id], task_id)
            except Exception:
                continue  # corrupt: skipped here, dead-lettered when claimed
            if (workflow is None or task.workflow == workflow) and (wanted is None or task.status in wanted):
                found.append(task)
        page = found[:limit]
        return Page(page, page[-1].id if len(found) > limit else None)

    async def delete(self, task_id: str) -> bool:
        self.queue.pop(task_id, None)
        self.keys = {k: v for k, v in self.keys.items() if v != task_id}
        return self.records.pop(task_id, None) is not None

    async def purge(self, *, older_than: datetime, statuses: Iterable[TaskStatus]) -> int:
        wanted = {TaskStatus(s) for s in statuses}
        if not wanted <= TERMINAL:
            raise ValueError(f"purge only deletes terminal tasks; {wanted - TERMINAL} are not terminal")
        doomed = [t.id for t in (await self.list(limit=len(self.records) + 1)).tasks
                  if t.status in wanted and t.updated_at < older_than]
        for task_id in doomed:
            await self.delete(task_id)
        return len(doomed)

    async def quarantine(self, task: Task) -> Task:
        stored = task.evolve(version=task.version + 1)
        self.records[task.id] = encode_task(stored)
        return stored

    # -- TaskQueue ---------------------------------------------------------------------

    async def enqueue(self, workflow: str, task_id: str, *, not_before: datetime | None = None) -> None:
        due = not_before.timestamp() if not_before else time.time()
        entry = self.queue.get(task_id)
        if entry is None:
            self.queue[task_id] = Entry(workflow, due)
        elif entry.receipt is None and entry.due > due:
            entry.due = due  # a waiting entry is moved earlier, never later; a lease stays
        else:
            return
        await self._notify()

    async def claim(self, workflow: str, *, lease: float, wait: float) -> Claim | None:
        give_up = time.time() + wait
        while True:
            now = time.time()
            due = [(e.due, e.seq, i) for i, e in self.queue.items() if e.workflow == workflow]
            due = [d for d in due if d[0] <= now]
            if due:
                task_id = min(due)[2]
                entry = self.queue[task_id]
                entry.receipt, entry.due = secrets.token_hex(8), now + lease
                entry.deliveries += 1
                return Claim(task_id, workflow, entry.receipt, entry.deliveries, entry.due)
            later = [e.due for e in self.queue.values() if e.workflow == workflow] + [give_up]
            if now >= give_up:
                return None
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.001, min(later) - now))
            except asyncio.TimeoutError:
                pass

    async def extend(self, claim: Claim, *, lease: float) -> Claim:
        entry = self._held(claim)
        entry.due = time.time() + lease
        return Claim(claim.task_id, claim.workflow, claim.receipt, claim.deliveries, entry.due)

    async def ack(self, claim: Claim) -> None:
        self._held(claim)
        del self.queue[claim.task_id]

    async def release(self, claim: Claim, *, delay: float = 0.0) -> None:
        entry = self._held(claim)
        entry.receipt, entry.due = None, time.time() + delay
        await self._notify()

    def _held(self, claim: Claim) -> Entry:
        entry = self.queue.get(claim.task_id)
        if entry is None or entry.receipt != claim.receipt or entry.due <= time.time():
            raise LeaseLostError(claim.task_id)
        return entry

    async def _notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    # -- back doors for the conformance suite ------------------------------------------

    def write_raw(self, task_id: str, raw: bytes) -> None:
        self.records[task_id] = raw

    def expire_lease(self, task_id: str) -> None:
        entry = self.queue.get(task_id)
        if entry is not None and entry.receipt is not None:
            entry.due = 0.0


class TwoShortcutsOnly:
    """A third-party backend written from docs that listed two atomic shortcuts: submit and
    requeue, but no settle (the memory backend, with `settle` taken away)."""

    def __init__(self) -> None:
        self.inner = MemoryBackend()

    def __getattr__(self, name: str) -> Any:
        if name == "settle":
            raise AttributeError(name)
        return getattr(self.inner, name)
