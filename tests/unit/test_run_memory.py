"""A finished run is freed as soon as its task is settled, by reference counting alone.

A worker starts a `Run` for every claim. When the run (its heartbeat's callbacks, its
log's fields) referred back to itself, every finished run was a reference cycle: it kept
its task, claim, coroutine and asyncio task alive until the cycle collector found them,
and the collector's passes over those piles cost a worker about a sixth of its time per
task. These tests run tasks with the cycle collector off and look for what is left.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from salvador_core import Engine, RetryPolicy, StepContext, TaskStatus, Workflow
from salvador_core.backends.memory import MemoryBackend
from salvador_core.heartbeat import Heartbeat
from salvador_core.run import Run
from salvador_core.stepcall import StepCaller
from tests.helpers.engines import settled


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def alive(*kinds: type) -> list[str]:
    return [type(o).__name__ for o in gc.get_objects() if type(o) in kinds]


@pytest.mark.asyncio
@pytest.mark.usefixtures("no_cycle_collector")
async def test_runs_that_complete_fail_retry_or_are_cancelled_leave_nothing_behind() -> None:
    attempts: dict[str, int] = {}
    wf = Workflow("errands", retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0.0))

    @wf.step()
    async def first(ctx: StepContext) -> int:
        return 1

    @wf.step()
    def second(ctx: StepContext) -> str:  # sync: runs in a thread
        kind = ctx.task.json()["kind"]
        attempts[ctx.task.id] = attempts.get(ctx.task.id, 0) + 1
        if kind == "fails" or (kind == "flaky" and attempts[ctx.task.id] == 1):
            raise RuntimeError(f"{kind} step")
        return "done"

    @wf.step()
    async def third(ctx: StepContext) -> None:
        kind = ctx.task.json()["kind"]
        if kind == "slow":
            await asyncio.sleep(30)
        if kind == "fails-async":
            raise ValueError("async step")

    engine = Engine(
        MemoryBackend(), workflows=[wf], concurrency=4, lease=1.0, poll_interval=0.05, observers=[]
    )
    async with engine:
        kinds = ("ok", "flaky", "fails", "fails-async", "slow")
        ids = {kind: await engine.submit(wf, {"kind": kind}) for kind in kinds}
        worker = asyncio.create_task(engine.run(handle_signals=False))
        for kind in kinds[:-1]:
            await settled(engine, ids[kind])
        for _ in range(500):
            if (await engine.get_task(ids["slow"])).step == 2:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.01)
        await engine.cancel(ids["slow"])
        final = {kind: (await settled(engine, task_id)).status for kind, task_id in ids.items()}
        for _ in range(100):  # the runs' own tasks end just after their final writes
            if not engine.active_runs():
                break
            await asyncio.sleep(0.01)
        left = alive(Run, Heartbeat, StepCaller)
        engine.stop()
        await worker

    assert final == {
        "ok": TaskStatus.COMPLETED,
        "flaky": TaskStatus.COMPLETED,
        "fails": TaskStatus.FAILED,
        "fails-async": TaskStatus.FAILED,
        "slow": TaskStatus.CANCELLED,
    }
    assert left == []
