"""A failure to record a step's failure is salvador's own fault: it is logged with its cause
and recorded on the task as `internal-error`, never passed off as a lost worker.

The backend is the memory backend refusing the first write of a failed task the way an
unencodable record is refused (the original fault: an error message holding a lone
surrogate, which `.encode()` refuses, so the task waited out lease after lease and ended
`worker-lost` with no failure recorded).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from salvador_core import NO_RETRY, Claim, Engine, StepContext, Task, TaskStatus, Workflow
from salvador_core.backends.memory import MemoryBackend
from tests.helpers.engines import settled


class RefusesTheFirstFailureRecord(MemoryBackend):
    """The first final write of a failed task raises what encoding a lone surrogate raises;
    nothing is written. Later writes go through."""

    refused = 0

    async def settle(self, task: Task, expected_version: int, claim: Claim) -> Task:
        if task.status is TaskStatus.FAILED and not self.refused:
            self.refused += 1
            "\udcff".encode()  # raises UnicodeEncodeError
        return await super().settle(task, expected_version, claim)


@pytest.mark.asyncio
async def test_a_failure_that_cannot_be_recorded_is_logged_with_its_cause_and_recorded_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = RefusesTheFirstFailureRecord()
    task, calls = await _fail_one_step(backend, caplog)

    assert backend.refused == 1, "the fault was never injected"
    assert calls == [1], "the step ran again: the failure was treated as a lost worker"
    assert task.status is TaskStatus.FAILED
    assert task.dead_letter == "internal-error", task.dead_letter
    assert task.error is not None
    assert task.error.type == "salvador.InternalError"
    assert "UnicodeEncodeError" in task.error.message, task.error.message
    assert "surrogates not allowed" in task.error.message, task.error.message

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and task.id in r.getMessage()]
    internal = [r for r in errors if "internal error" in r.getMessage()]
    assert len(internal) == 1, [r.getMessage() for r in errors]
    line = internal[0].getMessage()
    assert "UnicodeEncodeError: 'utf-8' codec can't encode character '\\udcff'" in line, line
    assert "; recorded it as the task's failure" in line, line
    assert internal[0].exc_info is not None, "the cause's traceback was not logged"
    assert not any("lease will expire" in r.getMessage() for r in errors), [r.getMessage() for r in errors]


@pytest.mark.asyncio
async def test_a_task_that_ends_internal_error_is_never_logged_as_dead_lettered_step_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task, _ = await _fail_one_step(RefusesTheFirstFailureRecord(), caplog)
    assert task.dead_letter == "internal-error"
    said = [r.getMessage() for r in caplog.records if task.id in r.getMessage()]
    assert not any("dead-lettered (step-failed)" in line for line in said), said


async def _fail_one_step(
    backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> tuple[Task, list[int]]:
    """Run one task whose only step fails for good (no retry); the settled task and the
    attempts its step saw."""
    calls: list[int] = []
    wf = Workflow("charge", retry=NO_RETRY)

    @wf.step()
    async def charge(ctx: StepContext) -> None:
        calls.append(ctx.attempt)
        raise RuntimeError("card declined")

    engine = Engine(backend, workflows=[wf], lease=0.6, poll_interval=0.05, durability="off")
    with caplog.at_level(logging.INFO, logger="salvador"):
        async with engine:
            worker = asyncio.create_task(engine.run(handle_signals=False))
            task_id = await engine.submit(wf)
            try:
                task = await settled(engine, task_id)
                await asyncio.sleep(0.7)  # a lease: a wrongly retried task would run again
                return task, calls
            finally:
                engine.stop()
                await asyncio.wait_for(worker, 10)


@pytest.mark.asyncio
async def test_the_step_failure_being_recorded_is_kept_when_the_task_ends_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task, _ = await _fail_one_step(RefusesTheFirstFailureRecord(), caplog)
    assert task.dead_letter == "internal-error"
    assert task.error is not None
    kept = [task.error.message, *(f"{f.type}: {f.message}" for f in task.failures)]
    assert any("card declined" in text for text in kept), kept


@pytest.mark.asyncio
async def test_every_run_of_a_worker_writes_an_owner_token_of_its_own() -> None:
    # The owner token fences a run's writes: two runs (even of the same task, one after
    # the other) must never share one, and each names the worker it ran in.
    started = asyncio.Event()
    release = asyncio.Event()
    running = 0

    async def hold(ctx: StepContext) -> None:
        nonlocal running
        running += 1
        if running == 3:
            started.set()
        await release.wait()

    wf = Workflow("owners").step("hold", hold)
    engine = Engine.from_url("memory://", workflows=[wf], concurrency=3, poll_interval=0.05)
    async with engine:
        ids = [await engine.submit(wf) for _ in range(3)]
        worker = asyncio.create_task(engine.run(handle_signals=False))
        await asyncio.wait_for(started.wait(), 5)
        runs = engine.active_runs()
        stored = [await engine.get_task(task_id) for task_id in ids]
        release.set()
        for task_id in ids:
            await settled(engine, task_id)
        engine.stop()
        await worker
    owners = {run.owner for run in runs}
    assert len(owners) == 3
    assert {task.owner for task in stored if task is not None} == owners
    worker_ids = {owner.rsplit("/", 1)[0] for owner in owners}
    assert len(worker_ids) == 1
