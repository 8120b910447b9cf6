"""Crash safety across real OS processes on the embedded default (SQLite).

Workers are separate processes (tests/helpers/worker_app.py) that are SIGKILLed, SIGSTOPped and
SIGCONTed for real; what ran is counted from side effects the steps leave in a shared
log, not from the engine's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from salvador_core import Engine, Task, TaskStatus
from tests.helpers.worker_app import build
from tests.helpers.workers import Workers, effect_lines, effects, wait_for


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "effects.log").touch()
    return tmp_path


@pytest.fixture
def url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'tasks.db'}"


@pytest.fixture
def workers(url: str, workdir: Path) -> Iterator[Workers]:
    pool = Workers(url, workdir)
    yield pool
    pool.stop_all()


@pytest_asyncio.fixture
async def producer(url: str, workdir: Path) -> AsyncIterator[Engine]:
    async with Engine.from_url(url, workflows=build(workdir, "none")) as engine:
        yield engine


async def settled(engine: Engine, task_id: str) -> Task:
    task = await engine.get_task(task_id)
    assert task is not None
    return task


@pytest.mark.asyncio
async def test_two_worker_processes_complete_1000_tasks_exactly_once(
    producer: Engine, workers: Workers, workdir: Path
) -> None:
    ids = [await producer.submit("counted", {"n": i}) for i in range(1000)]
    first = workers.start("--concurrency", "8")
    second = workers.start("--concurrency", "8")

    async def all_completed() -> bool:
        page = await producer.list_tasks(status=TaskStatus.COMPLETED, limit=1000)
        return len(page.tasks) == 1000

    await wait_for(all_completed, 120, "1,000 tasks to complete")
    ran = effects(workdir)
    for step in ("one", "two", "three"):
        assert {tid for (event, tid) in ran if event == step} == set(ids)
    assert max(ran.values()) == 1, "a completed step ran twice"
    pids = {row[2] for row in effect_lines(workdir)}
    assert pids == {str(first.pid), str(second.pid)}, "both workers should have taken tasks"


@pytest.mark.asyncio
async def test_worker_killed_mid_step_is_resumed_at_that_step(
    producer: Engine, workers: Workers, workdir: Path
) -> None:
    task_id = await producer.submit("counted", {"order": "A-1"})
    doomed = workers.start("--block", "step2-hang", "--lease", "1.5")
    await wait_for(lambda: (workdir / f"in-two-{task_id}").exists(), 30, "step two to start")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)

    crashed = await settled(producer, task_id)
    assert (crashed.status, crashed.step, crashed.attempt) == (TaskStatus.RUNNING, 1, 1)

    killed_at = time.monotonic()
    workers.start("--lease", "1.5")

    async def completed() -> bool:
        return (await settled(producer, task_id)).status is TaskStatus.COMPLETED

    await wait_for(completed, 30, "the task to complete on the second worker")
    assert time.monotonic() - killed_at >= 1.0, "resumed before the dead worker's lease expired"
    done = await settled(producer, task_id)
    ran = effects(workdir)
    assert ran[("one", task_id)] == 1, "step one was re-run after the crash"
    assert ran[("two", task_id)] == 1
    assert ran[("three", task_id)] == 1
    assert done.results["two"]["pid"] != doomed.pid
    assert done.attempt == 1  # the last step's attempt; step two needed attempt 2
    assert done.results["one"] == 1


@pytest.mark.asyncio
async def test_zombie_worker_cannot_overwrite_new_owner(
    producer: Engine, workers: Workers, workdir: Path
) -> None:
    task_id = await producer.submit("counted", {"order": "Z-1"})
    zombie = workers.start("--block", "step2-brief", "--lease", "3")
    await wait_for(lambda: (workdir / f"in-two-{task_id}").exists(), 30, "step two to start")
    zombie.send_signal(signal.SIGSTOP)  # paused inside step two, before its 0.3 s sleep ends

    successor = workers.start("--lease", "3")

    async def completed() -> bool:
        return (await settled(producer, task_id)).status is TaskStatus.COMPLETED

    await wait_for(completed, 30, "the new owner to complete the task")
    finished = await settled(producer, task_id)
    assert finished.results["two"]["pid"] == successor.pid

    zombie.send_signal(signal.SIGCONT)
    await wait_for(lambda: "ConflictError" in workers.log_of(zombie), 15, "the zombie's conflict")
    await asyncio.sleep(0.5)  # give a misbehaving zombie the chance to run step three

    after = await settled(producer, task_id)
    assert after.version == finished.version, "the zombie wrote to the task"
    assert after.results == finished.results
    ran = effects(workdir)
    # The zombie's step two did finish its side effect (steps are at-least-once) ...
    assert ran[("two", task_id)] == 2
    # ... but it never went on to step three: that ran once, by the new owner.
    assert ran[("three", task_id)] == 1
    assert "stopped working on it" in workers.log_of(zombie)


@pytest.mark.asyncio
async def test_saga_compensates_in_reverse_exactly_once_across_a_crash(
    producer: Engine, workers: Workers, workdir: Path
) -> None:
    task_id = await producer.submit("saga", {"trip": "T-9"})
    doomed = workers.start("--block", "compensate2-hang", "--lease", "1.5")
    await wait_for(lambda: (workdir / "undo-s2-hung").exists(), 30, "compensation of s2")
    during = await settled(producer, task_id)
    assert during.status is TaskStatus.COMPENSATING
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)

    workers.start("--lease", "1.5")

    async def compensated() -> bool:
        return (await settled(producer, task_id)).status is TaskStatus.COMPENSATED

    await wait_for(compensated, 30, "compensation to finish on the second worker")
    task = await settled(producer, task_id)
    assert task.compensated == ("s2", "s1")
    assert task.error is not None
    assert task.error.step == "s3"
    assert "s3 failed on purpose" in task.error.message
    lines = [row[0] for row in effect_lines(workdir)]
    done = [ev for ev in lines if ev.endswith("-done")]
    assert done == ["undo-s2-done", "undo-s1-done"], "each compensation completes once, newest first"
    assert lines.count("undo-s2-start") == 2  # interrupted by the kill, then run again
    assert "s4" not in lines
    assert "undo-s3-start" not in lines
    assert "undo-s4-start" not in lines
    assert lines.count("s1") == lines.count("s2") == lines.count("s3") == 1
    assert (workdir / "undo-s2-hung").exists()


@pytest.mark.asyncio
async def test_sigterm_drains_and_hands_the_task_over_without_waiting_for_the_lease(
    producer: Engine, workers: Workers, workdir: Path
) -> None:
    task_id = await producer.submit("counted", {"order": "T-1"})
    # A 60 s lease: if the task were not released, the next worker would wait that long.
    leaving = workers.start("--block", "step2-hang", "--lease", "60")
    await wait_for(lambda: (workdir / f"in-two-{task_id}").exists(), 30, "step two to start")
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(timeout=20) == 0, workers.log_of(leaving)
    assert "released for another worker (shutdown)" in workers.log_of(leaving)

    handed_over = await settled(producer, task_id)
    assert (handed_over.status, handed_over.step, handed_over.attempt) == (TaskStatus.PENDING, 1, 0)

    started = time.monotonic()
    workers.start("--lease", "60")

    async def completed() -> bool:
        return (await settled(producer, task_id)).status is TaskStatus.COMPLETED

    await wait_for(completed, 30, "the next worker to finish the task")
    assert time.monotonic() - started < 15
    ran = effects(workdir)
    assert ran[("one", task_id)] == 1
    assert ran[("three", task_id)] == 1
