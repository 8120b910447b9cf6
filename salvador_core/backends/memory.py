"""`memory://`: the whole contract in one process, nothing durable.

For users' own tests and demos. It is held to the same conformance suite as every other
backend, leases and fencing included, so code tested against it behaves the same on a
real server. Records are kept encoded, exactly as a server would hold them.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import heapq
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from salvador_core.errors import (
    BackendNotOpenError,
    ConflictError,
    CorruptRecordError,
    LeaseLostError,
    RecordVersionError,
)
from salvador_core.task import (
    Claim,
    Page,
    StatsTally,
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


@dataclass
class _Lease:
    workflow: str
    receipt: str
    deadline: float  # time.monotonic()


class MemoryBackend:
    """Store and queue in process memory; `memory://`. Each instance is its own world."""

    max_payload_bytes: int | None = None

    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}
        # The version of each record this backend wrote, so a CAS needs no decode; a record
        # written around it (the corrupt-record back door) has none and is decoded.
        self._versions: dict[str, int] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        self._keys: dict[str, tuple[str, str]] = {}  # task id -> its idempotency key, for delete
        # The ids of `_records` in ascending order, so that a page of `list` costs a bisect
        # and the page, not a sort of every id (orphan repair lists a page every upkeep).
        # Ids begin with their creation time: a new one goes at the end, or a few places
        # before it. A deleted id stays (skipped) until deleted ones are half the list.
        self._ids: builtins.list[str] = []
        self._deleted = 0  # ids in `_ids` no longer in `_records`
        self._indexed = self._records  # the dict `_ids` indexes (see `_sorted_ids`)
        self._ready: dict[str, deque[str]] = {}
        self._delayed: dict[str, list[tuple[float, str]]] = {}
        self._leases: dict[str, _Lease] = {}
        self._queued: dict[str, str] = {}  # task id -> workflow, while ready/delayed/leased
        self._deliveries: dict[str, int] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._open = False  # records outlive close(); use needs open(), as on every backend

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryBackend:
        parts = urlsplit(url)
        if options or parts.netloc or parts.path or parts.query:
            given = sorted(options) or url
            raise ValueError(f"memory:// takes no host, path or options (got {given!r}); use exactly 'memory://'")
        return cls()

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise BackendNotOpenError("memory://")

    async def __aenter__(self) -> MemoryBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- store ---------------------------------------------------------------------------

    async def create(self, task: Task) -> Task:
        self._check_open()
        if task.idempotency_key is not None:
            existing = self._idempotency.get((task.workflow, task.idempotency_key))
            if existing is not None and existing in self._records:
                return decode_task(self._records[existing], existing)
        stored = task.evolve(version=1)
        if task.id not in self._records:
            if self._ids and task.id < self._ids[-1]:
                bisect.insort(self._ids, task.id)
            else:
                self._ids.append(task.id)
        self._records[task.id] = encode_task(stored)
        self._versions[task.id] = 1
        if task.idempotency_key is not None:
            key = (task.workflow, task.idempotency_key)
            self._idempotency[key] = task.id
            self._keys[task.id] = key
        return stored

    async def get(self, task_id: str) -> Task | None:
        self._check_open()
        raw = self._records.get(task_id)
        return None if raw is None else decode_task(raw, task_id)

    async def update(self, task: Task, expected_version: int) -> Task:
        self._check_open()
        raw = self._records.get(task.id)
        if raw is None:
            raise ConflictError(task.id, expected_version, None)
        current = self._versions.get(task.id)
        if current is None:
            current = decode_task(raw, task.id).version
        if current != expected_version:
            raise ConflictError(task.id, expected_version, current)
        stored = next_version(task, expected_version)
        self._records[task.id] = encode_task(stored)
        self._versions[task.id] = stored.version
        return stored

    async def list(
        self,
        *,
        workflow: str | None = None,
        status: TaskStatus | Iterable[TaskStatus] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        self._check_open()
        wanted = statuses_of(status)
        found: list[Task] = []
        ids, records = self._sorted_ids(), self._records
        start = 0 if cursor is None else bisect.bisect_right(ids, cursor)
        for i in range(start, len(ids)):
            task_id = ids[i]
            raw = records.get(task_id)
            if raw is None:
                continue  # deleted
            try:
                task = decode_task(raw, task_id)
            except (CorruptRecordError, RecordVersionError):
                continue  # the protocol: skipped here, dead-lettered (or left) when claimed
            if workflow is not None and task.workflow != workflow:
                continue
            if wanted is not None and task.status not in wanted:
                continue
            found.append(task)
            if len(found) > limit:
                break
        more = len(found) > limit
        page = found[:limit]
        return Page(page, page[-1].id if more and page else None)

    async def delete(self, task_id: str) -> bool:
        self._check_open()
        raw = self._records.pop(task_id, None)
        if raw is None:
            return False
        self._versions.pop(task_id, None)
        self._deleted += 1
        if self._deleted * 2 > len(self._ids):
            self._ids = [i for i in self._ids if i in self._records]
            self._deleted = 0
        self._drop_from_queue(task_id)
        key = self._keys.pop(task_id, None)
        if key is not None and self._idempotency.get(key) == task_id:
            del self._idempotency[key]
        return True

    async def purge(self, *, older_than: datetime, statuses: Iterable[TaskStatus]) -> int:
        self._check_open()
        wanted = purge_statuses(statuses)
        doomed = []
        for task_id, raw in self._records.items():
            try:
                task = decode_task(raw, task_id)
            except (CorruptRecordError, RecordVersionError):
                continue  # unreadable: its age and status are unknown, so it is kept
            if task.status in wanted and task.updated_at < older_than:
                doomed.append(task_id)
        for task_id in doomed:
            await self.delete(task_id)
        return len(doomed)

    async def stats(self) -> builtins.list[WorkflowStats]:
        """Counts by workflow and status, the queue's depth, and completions per minute
        (the completed tasks' `updated_at`) (TaskCounts), in one pass."""
        self._check_open()
        tally = StatsTally(utcnow())
        for task_id, raw in self._records.items():
            try:
                task = decode_task(raw, task_id)
            except (CorruptRecordError, RecordVersionError):
                continue
            tally.add(task, leased=task_id in self._leases)
        return tally.result()

    async def quarantine(self, task: Task) -> Task:
        self._check_open()
        stored = next_version(task, task.version)
        self._records[task.id] = encode_task(stored)
        self._versions[task.id] = stored.version
        return stored

    # -- queue ---------------------------------------------------------------------------

    async def enqueue(self, workflow: str, task_id: str, *, not_before: datetime | None = None) -> None:
        self._check_open()
        delay = _seconds_until(not_before)
        if task_id in self._queued:
            delayed = self._delayed.get(workflow, [])
            due = next((d for d, i in delayed if i == task_id), None)
            if due is None or due <= time.monotonic() + delay:
                return  # ready, leased, or delayed until no later than asked: left as it is
            self._unschedule(task_id)  # moved earlier, never later
        self._queued[task_id] = workflow
        self._schedule(workflow, task_id, delay)

    async def claim(self, workflow: str, *, lease: float, wait: float) -> Claim | None:
        claims = await self.claim_many(workflow, 1, lease=lease, wait=wait)
        return claims[0] if claims else None

    async def claim_many(
        self, workflow: str, limit: int, *, lease: float, wait: float
    ) -> builtins.list[Claim]:
        """Up to `limit` leases on due tasks of `workflow`, oldest first (BatchClaims)."""
        self._check_open()
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        give_up = time.monotonic() + max(0.0, wait)
        while True:
            now = time.monotonic()
            self._reap(workflow, now)
            ready = self._ready.get(workflow)
            if ready:
                claims: builtins.list[Claim] = []
                while ready and len(claims) < limit:
                    task_id = ready.popleft()
                    receipt = secrets.token_hex(8)
                    self._leases[task_id] = _Lease(workflow, receipt, now + lease)
                    self._deliveries[task_id] = self._deliveries.get(task_id, 0) + 1
                    claims.append(
                        Claim(task_id, workflow, receipt, self._deliveries[task_id], time.time() + lease)
                    )
                return claims
            if now >= give_up:
                return []
            event = self._wakeups.setdefault(workflow, asyncio.Event())
            nap = min(give_up, self._next_due(workflow, give_up)) - now
            try:
                await asyncio.wait_for(event.wait(), timeout=max(nap, 0.001))
            except asyncio.TimeoutError:
                pass

    async def extend(self, claim: Claim, *, lease: float) -> Claim:
        self._check_open()
        held = self._current_lease(claim)
        held.deadline = time.monotonic() + lease
        return Claim(
            claim.task_id, claim.workflow, claim.receipt, claim.deliveries, time.time() + lease
        )

    async def ack(self, claim: Claim) -> None:
        self._check_open()
        self._current_lease(claim)
        self._drop_from_queue(claim.task_id)
        self._deliveries.pop(claim.task_id, None)

    async def release(self, claim: Claim, *, delay: float = 0.0) -> None:
        self._check_open()
        self._current_lease(claim)
        del self._leases[claim.task_id]
        self._schedule(claim.workflow, claim.task_id, delay)

    # -- backend ------------------------------------------------------------------------

    async def submit(self, task: Task) -> Task:
        self._check_open()
        stored = await self.create(task)
        if stored.id == task.id:
            await self.enqueue(task.workflow, task.id, not_before=task.not_before)
        return stored

    async def requeue(self, task: Task, expected_version: int) -> Task:
        self._check_open()
        stored = await self.update(task, expected_version)
        # Not `enqueue`: that keeps an existing entry, and a worker still holding a lease
        # from before the requeue (it read the task as terminal) would ack it away. The
        # old lease and any old due time are voided; the task is due now or at not_before.
        self._unschedule(task.id)
        self._queued[task.id] = task.workflow
        self._schedule(task.workflow, task.id, _seconds_until(task.not_before))
        return stored

    async def settle(self, task: Task, expected_version: int, claim: Claim) -> Task:
        self._check_open()
        stored = await self.update(task, expected_version)
        held = self._leases.get(claim.task_id)
        if held is not None and held.receipt == claim.receipt:
            self._drop_from_queue(claim.task_id)
            self._deliveries.pop(claim.task_id, None)
        return stored

    # -- internals ----------------------------------------------------------------------

    def _sorted_ids(self) -> builtins.list[str]:
        """`_ids`, rebuilt first if it no longer matches `_records` (a subclass or a test
        that replaced the records, as the suite's file-backed variants do)."""
        if self._indexed is not self._records or len(self._ids) - self._deleted != len(self._records):
            self._ids = sorted(self._records)
            self._deleted = 0
            self._indexed = self._records
        return self._ids

    def _schedule(self, workflow: str, task_id: str, delay: float) -> None:
        if delay > 0:
            heapq.heappush(
                self._delayed.setdefault(workflow, []), (time.monotonic() + delay, task_id)
            )
        else:
            self._ready.setdefault(workflow, deque()).append(task_id)
        self._wake(workflow)

    def _wake(self, workflow: str) -> None:
        event = self._wakeups.pop(workflow, None)
        if event is not None:
            event.set()

    def _reap(self, workflow: str, now: float) -> None:
        """Promote due delayed tasks and re-deliver expired leases, oldest first."""
        delayed = self._delayed.get(workflow)
        while delayed and delayed[0][0] <= now:
            _, task_id = heapq.heappop(delayed)
            if self._queued.get(task_id) == workflow:
                self._ready.setdefault(workflow, deque()).append(task_id)
        expired = [
            task_id
            for task_id, held in self._leases.items()
            if held.workflow == workflow and held.deadline <= now
        ]
        for task_id in expired:
            del self._leases[task_id]
            self._ready.setdefault(workflow, deque()).append(task_id)

    def _next_due(self, workflow: str, default: float) -> float:
        times = [d for d, _ in self._delayed.get(workflow, ())[:1]]
        times += [h.deadline for h in self._leases.values() if h.workflow == workflow]
        return min(times, default=default)

    def _current_lease(self, claim: Claim) -> _Lease:
        held = self._leases.get(claim.task_id)
        if held is None or held.receipt != claim.receipt:
            raise LeaseLostError(claim.task_id, "it was re-delivered, requeued or acked")
        if held.deadline <= time.monotonic():
            raise LeaseLostError(claim.task_id, "it expired")
        return held

    def _drop_from_queue(self, task_id: str) -> None:
        self._unschedule(task_id)
        self._queued.pop(task_id, None)

    def _unschedule(self, task_id: str) -> None:
        """Void the task's lease and take it out of ready and delayed; `queued` is kept."""
        workflow = self._queued.get(task_id)
        if self._leases.pop(task_id, None) is not None:
            return  # a leased task is neither ready nor delayed: nothing to scan
        if workflow is not None:
            ready = self._ready.get(workflow)
            if ready and task_id in ready:
                ready.remove(task_id)
            delayed = self._delayed.get(workflow)
            if delayed:
                self._delayed[workflow] = [e for e in delayed if e[1] != task_id]
                heapq.heapify(self._delayed[workflow])


def _seconds_until(moment: datetime | None) -> float:
    """Seconds from now until `moment` (0 or less: due now)."""
    return 0.0 if moment is None else (moment - utcnow()).total_seconds()
