"""Log records about a task, whoever writes them (the logging observer, a run, its heartbeat,
a step through `ctx.logger`), carry `task_id`, `workflow`, `step` and `attempt` as `extra`;
each event is logged once, saying what the record says."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from salvador_core import Engine, Workflow
from salvador_core.backends.memory import MemoryBackend
from salvador_core.errors import BackendUnavailableError, LeaseLostError
from salvador_core.observe import TaskLog
from salvador_core.retry import NO_RETRY
from salvador_core.task import Claim, DeadLetter, Task, TaskStatus
from salvador_core.workflow import StepContext

LOGGER = "salvador.test.logging"
FIELDS = ("task_id", "workflow", "step", "attempt")


def fields_of(record: logging.LogRecord) -> tuple[Any, ...]:
    return tuple(getattr(record, name, "<missing>") for name in FIELDS)


async def run_until(
    engine: Engine, task_id: str, done: Callable[[Task], bool], seconds: float = 10.0
) -> Task:
    """Run a worker until the task satisfies `done`; returns the task as stored then."""
    worker = asyncio.create_task(engine.run(handle_signals=False))
    try:
        for _ in range(int(seconds / 0.02)):
            task = await engine.get_task(task_id)
            assert task is not None
            if done(task):
                return task
            await asyncio.sleep(0.02)
        raise AssertionError(f"task {task_id} never got there: {task}")
    finally:
        engine.stop()
        await worker


def engine_on(backend: MemoryBackend, wf: Workflow, **options: Any) -> Engine:
    return Engine(backend, workflows=[wf], logger=logging.getLogger(LOGGER), poll_interval=0.05, **options)


class ExtendFails(MemoryBackend):
    """Every heartbeat's `extend` raises `error`."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def extend(self, claim: Claim, *, lease: float) -> Claim:
        raise self.error


class FailureWriteFails(MemoryBackend):
    """The write that settles a failed task raises, `times` times (the first writes of a
    step failure, then of the internal error with that failure, then without it)."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    async def settle(self, task: Task, expected_version: int, claim: Claim) -> Task:
        if task.status is TaskStatus.FAILED and self.times > 0:
            self.times -= 1
            raise RuntimeError("the store refused the write")
        return await super().settle(task, expected_version, claim)


@pytest.mark.asyncio
async def test_a_failing_heartbeat_is_logged_with_the_step_and_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def slow(ctx: StepContext) -> None:
        await asyncio.sleep(0.5)

    wf = Workflow("beating").step("slow", slow)
    engine = engine_on(ExtendFails(BackendUnavailableError("the server went away")), wf, lease=0.3)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with engine:
            task_id = await engine.submit(wf)
            await run_until(engine, task_id, lambda t: t.status is TaskStatus.COMPLETED)
    failed = [r for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert failed, [r.getMessage() for r in caplog.records]
    for record in failed:
        assert fields_of(record) == (task_id, "beating", "slow", 1)


@pytest.mark.asyncio
async def test_a_lost_lease_is_logged_once_with_its_cause_step_and_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = asyncio.Event()

    async def slow(ctx: StepContext) -> None:
        started.set()
        await asyncio.sleep(5)

    wf = Workflow("losing").step("slow", slow)
    engine = engine_on(ExtendFails(LeaseLostError("x", "it expired")), wf, lease=0.3)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with engine:
            task_id = await engine.submit(wf)
            worker = asyncio.create_task(engine.run(handle_signals=False))
            await asyncio.wait_for(started.wait(), 5)
            for _ in range(100):
                if not engine.active_runs():
                    break
                await asyncio.sleep(0.02)
            engine.stop()
            await worker
    about_it = [r for r in caplog.records if r.levelno >= logging.WARNING and task_id in r.getMessage()]
    assert len(about_it) == 1, [r.getMessage() for r in about_it]
    (record,) = about_it
    assert "its lease could not be renewed (it expired)" in record.getMessage()
    assert fields_of(record) == (task_id, "losing", "slow", 1)


@pytest.mark.asyncio
async def test_records_a_step_writes_through_ctx_logger_carry_the_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def chatty(ctx: StepContext) -> None:
        ctx.logger.info("charging order %s", 7, extra={"order": 7})

    wf = Workflow("chatty").step("first", lambda ctx: None).step("charge", chatty)
    engine = engine_on(MemoryBackend(), wf)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with engine:
            task_id = await engine.submit(wf, b"secret-card-number")
            await run_until(engine, task_id, lambda t: t.status is TaskStatus.COMPLETED)
    (record,) = [r for r in caplog.records if "charging order" in r.getMessage()]
    assert fields_of(record) == (task_id, "chatty", "charge", 1)
    assert record.order == 7  # type: ignore[attr-defined]
    assert "secret-card-number" not in record.getMessage()


@pytest.mark.asyncio
async def test_a_step_failure_that_cannot_be_written_is_logged_as_what_the_record_says(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(ctx: StepContext) -> None:
        raise ValueError("boom")

    wf = Workflow("unrecorded").step("broken", broken, retry=NO_RETRY)
    engine = engine_on(FailureWriteFails(times=1), wf)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with engine:
            task_id = await engine.submit(wf)
            task = await run_until(engine, task_id, lambda t: t.status.terminal)
    assert task.dead_letter is DeadLetter.INTERNAL_ERROR
    messages = [r.getMessage() for r in caplog.records]
    assert not any("dead-lettered (step-failed)" in m for m in messages), messages
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "internal-error" in record.getMessage()
    assert "the store refused the write" in record.getMessage()
    assert fields_of(record) == (task_id, "unrecorded", "broken", 1)


@pytest.mark.asyncio
async def test_an_internal_error_that_cannot_be_written_either_is_logged_with_the_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(ctx: StepContext) -> None:
        raise ValueError("boom")

    wf = Workflow("unwritable").step("broken", broken, retry=NO_RETRY)
    backend = FailureWriteFails(times=3)
    engine = engine_on(backend, wf)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with engine:
            task_id = await engine.submit(wf)
            worker = asyncio.create_task(engine.run(handle_signals=False))
            for _ in range(250):
                if backend.times == 0 and not engine.active_runs():
                    break
                await asyncio.sleep(0.02)
            engine.stop()
            await worker
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("could not record the internal error either" in r.getMessage() for r in errors)
    for record in errors:
        assert fields_of(record) == (task_id, "unwritable", "broken", 1), record.getMessage()


def test_task_log_reads_its_fields_only_for_a_record_that_is_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = []

    def fields() -> dict[str, Any]:
        calls.append(1)
        return {"task_id": "t1", "workflow": "wf", "step": "s", "attempt": 3}

    log = TaskLog(logging.getLogger(LOGGER), fields)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        log.debug("not written")
        assert calls == []
        log.info("written", extra={"step": "overridden?", "extra_field": 1})
    (record,) = caplog.records
    assert calls == [1]
    assert fields_of(record) == ("t1", "wf", "s", 3)  # the task's fields win over a caller's
    assert record.extra_field == 1  # type: ignore[attr-defined]


def test_task_log_over_an_adapter_keeps_the_adapters_extra(caplog: pytest.LogCaptureFixture) -> None:
    adapter = logging.LoggerAdapter(logging.getLogger(LOGGER), {"service": "billing"})
    log = TaskLog(adapter, lambda: {"task_id": "t1", "workflow": "wf", "step": None, "attempt": None})
    with caplog.at_level(logging.INFO, logger=LOGGER):
        log.info("hello")
    (record,) = caplog.records
    assert record.service == "billing"  # type: ignore[attr-defined]
    assert record.task_id == "t1"  # type: ignore[attr-defined]
