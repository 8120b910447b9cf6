"""The split composition: a separate store and queue behind one Backend face."""

from __future__ import annotations

from datetime import timedelta

import pytest

from salvador_core.backends.memory import MemoryBackend
from salvador_core.protocols import Backend
from salvador_core.split import SplitBackend, compose
from salvador_core.task import Task, TaskStatus, new_task_id, utcnow


def test_an_atomic_backend_is_used_as_it_is_and_anything_else_is_composed() -> None:
    one = MemoryBackend()
    assert compose(one) is one
    assert compose(one, one) is one
    split = compose(MemoryBackend(), MemoryBackend())
    assert isinstance(split, SplitBackend)
    assert isinstance(split, Backend)


@pytest.mark.asyncio
async def test_submit_creates_then_enqueues_and_an_idempotent_resubmit_repairs_an_orphan() -> None:
    store, queue = MemoryBackend(), MemoryBackend()
    split = SplitBackend(store, queue)
    await split.open()
    # What a producer that crashed between the two writes leaves: stored, never queued.
    orphan = await store.create(Task(id=new_task_id(), workflow="wf", idempotency_key="k"))
    assert await queue.claim("wf", lease=5, wait=0) is None
    again = await split.submit(Task(id=new_task_id(), workflow="wf", idempotency_key="k"))
    assert again.id == orphan.id
    claim = await queue.claim("wf", lease=5, wait=0)
    assert claim is not None
    assert claim.task_id == orphan.id


@pytest.mark.asyncio
async def test_a_duplicate_of_a_started_task_is_not_queued_again() -> None:
    store, queue = MemoryBackend(), MemoryBackend()
    split = SplitBackend(store, queue)
    await split.open()
    first = await split.submit(Task(id=new_task_id(), workflow="wf", idempotency_key="k"))
    claim = await queue.claim("wf", lease=5, wait=0)
    assert claim is not None
    await store.update(first.evolve(status=TaskStatus.RUNNING, attempt=1, owner="w/1"), first.version)
    await split.submit(Task(id=new_task_id(), workflow="wf", idempotency_key="k"))
    assert await queue.claim("wf", lease=5, wait=0) is None


@pytest.mark.asyncio
async def test_repair_reads_one_page_per_call_and_wraps_around() -> None:
    store, queue = MemoryBackend(), MemoryBackend()
    split = SplitBackend(store, queue)
    await split.open()
    split.page_size = 10
    old = utcnow() - timedelta(seconds=120)
    orphans = [await store.create(Task(id=new_task_id(), workflow="wf")) for _ in range(25)]
    for task in orphans:  # as if created two minutes ago
        await store.update(task.evolve(updated_at=old), task.version)
    store_updated = [await store.get(t.id) for t in orphans]
    assert all(t is not None for t in store_updated)
    counts = [await split.repair_orphans(workflows=["wf"], older_than=0) for _ in range(3)]
    assert counts == [10, 10, 5]  # bounded per call, whatever the store holds
    claimed = {c.task_id for c in [await queue.claim("wf", lease=5, wait=0) for _ in range(25)] if c}
    assert claimed == {t.id for t in orphans}
    # Started over at the end: the next pass reads the first page again.
    assert await split.repair_orphans(workflows=["wf"], older_than=0) == 10


@pytest.mark.asyncio
async def test_repair_leaves_young_foreign_and_started_tasks_alone() -> None:
    store, queue = MemoryBackend(), MemoryBackend()
    split = SplitBackend(store, queue)
    await split.open()
    young = await store.create(Task(id=new_task_id(), workflow="wf"))
    foreign = await store.create(Task(id=new_task_id(), workflow="other"))
    started = await store.create(Task(id=new_task_id(), workflow="wf"))
    await store.update(started.evolve(attempt=2, not_before=utcnow()), started.version)
    assert await split.repair_orphans(workflows=["wf"], older_than=60) == 0
    assert await split.repair_orphans(workflows=["wf"], older_than=0) == 1
    claim = await queue.claim("wf", lease=5, wait=0)
    assert claim is not None
    assert claim.task_id == young.id
    assert foreign.id != young.id


class AtomicWithoutLimit:
    """A backend with submit/requeue/settle but no `max_payload_bytes` attribute: before,
    the runtime Protocol check quietly sent it down the split path."""

    def __init__(self) -> None:
        self.inner = MemoryBackend()
        self.submits = 0

    def __getattr__(self, name: str) -> object:
        if name == "max_payload_bytes":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def submit(self, task: Task) -> Task:
        self.submits += 1
        return await self.inner.submit(task)


def test_the_atomic_path_does_not_depend_on_max_payload_bytes() -> None:
    backend = AtomicWithoutLimit()
    assert not hasattr(backend, "max_payload_bytes")
    for name in ("submit", "requeue", "settle", "create", "claim", "ack"):
        assert hasattr(backend, name)
    assert compose(backend) is backend, "a backend with the atomic methods was composed as split"
