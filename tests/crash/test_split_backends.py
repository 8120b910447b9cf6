"""Records in one backend, delivery in another: the engine itself must lose nothing between
`create` and `enqueue`, which are then two separate writes."""

from __future__ import annotations

import asyncio

import pytest

from salvador_core import Engine, Task, TaskStatus, Workflow
from salvador_core.backends.memory import MemoryBackend
from salvador_core.task import new_task_id


@pytest.mark.asyncio
async def test_task_created_but_never_queued_is_found_and_run() -> None:
    ran: list[str] = []

    async def step(ctx: object) -> None:
        ran.append("step")

    wf = Workflow("orphaned").step("step", step)
    store, queue = MemoryBackend(), MemoryBackend()
    engine = Engine(store, queue, workflows=[wf], lease=1.0, poll_interval=0.05)
    async with engine:
        # What a producer that crashed between its two writes leaves behind: a stored,
        # pending task that no queue knows about.
        orphan = await store.create(Task(id=new_task_id(), workflow=wf.name))
        queued = await engine.submit(wf)
        worker = asyncio.create_task(engine.run(handle_signals=False))
        try:
            for _ in range(500):
                done = [await engine.get_task(i) for i in (orphan.id, queued)]
                if all(t is not None and t.status is TaskStatus.COMPLETED for t in done):
                    break
                await asyncio.sleep(0.01)
        finally:
            engine.stop()
            await worker
    assert [t.status for t in done if t is not None] == [TaskStatus.COMPLETED] * 2
    assert ran == ["step", "step"]
