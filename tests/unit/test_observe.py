"""The observer seam: hooks, fan-out that isolates failures, structured log records."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from salvador_core import Engine, Workflow
from salvador_core.observe import HOOKS, LoggingObserver, Observer, Observers, combine, watches_steps
from salvador_core.task import DeadLetter, Task, TaskError, new_task_id
from tests.helpers.engines import settled


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def submitting(self, task: Task) -> Task:
        return task.evolve(meta={**task.meta, "traceparent": "00-1-2-01"})

    def submitted(self, task: Task, *, created: bool) -> None:
        self.events.append(("submitted", created))

    def step_started(self, task: Task, step: str, *, compensation: bool) -> None:
        self.events.append(("step_started", step))

    def step_finished(self, task: Task, step: str, **kw: Any) -> None:
        self.events.append(("step_finished", step, kw["error"] is None, kw["seconds"] >= 0))

    def settled(self, task: Task) -> None:
        self.events.append(("settled", task.status.value))

    def claimed(self, claim: Any) -> None:
        self.events.append(("claimed", claim.task_id))


class Broken(Observer):
    def settled(self, task: Task) -> None:
        raise RuntimeError("observer bug")


def test_every_hook_is_a_no_op_on_the_base_class() -> None:
    assert "step_finished" in HOOKS
    assert "submitting" in HOOKS
    for name in HOOKS:
        assert callable(getattr(Observers([]), name))


def test_combine_chooses_what_costs_least() -> None:
    log = logging.getLogger("t")
    assert isinstance(combine(None, log), LoggingObserver)
    assert type(combine([], log)) is Observer
    only = LoggingObserver(log)
    assert combine([only], log) is only
    assert isinstance(combine([Recorder()], log), Observers)
    with pytest.raises(TypeError, match="Observer instances"):
        combine([object()], log)  # type: ignore[list-item]


@pytest.mark.asyncio
async def test_an_engine_reports_a_task_from_submit_to_settle_and_observers_may_add_meta() -> None:
    recorder = Recorder()
    wf = Workflow("observed").step("one", lambda ctx: 1).step("two", lambda ctx: 2)
    engine = Engine.from_url("memory://", workflows=[wf], observers=[recorder, Broken()], poll_interval=0.05)
    async with engine:
        task_id = await engine.submit(wf)
        worker = asyncio.create_task(engine.run(handle_signals=False))
        for _ in range(300):
            task = await engine.get_task(task_id)
            if task is not None and task.status.terminal:
                break
            await asyncio.sleep(0.01)
        engine.stop()
        await worker
    assert task is not None
    assert task.meta["traceparent"] == "00-1-2-01"
    assert recorder.events == [
        ("submitted", True),
        ("claimed", task_id),
        ("step_started", "one"),
        ("step_finished", "one", True, True),
        ("step_started", "two"),
        ("step_finished", "two", True, True),
        ("settled", "completed"),
    ]


def test_log_records_about_a_task_carry_structured_fields_and_no_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer = LoggingObserver(logging.getLogger("salvador.test"))
    task = Task(id=new_task_id(), workflow="wf", body=b"secret-card-number", attempt=2)
    error = TaskError(type="builtins.ValueError", message="boom", step="charge", attempt=2)
    with caplog.at_level(logging.DEBUG, logger="salvador.test"):
        observer.retry_scheduled(task, "charge", delay=1.5, error=error)
        observer.dead_lettered(task, DeadLetter.STEP_FAILED, error)
        observer.step_finished(task, "charge", compensation=False, seconds=0.01, error=ValueError("boom"))
    assert len(caplog.records) == 3
    for record in caplog.records:
        assert record.task_id == task.id  # type: ignore[attr-defined]
        assert record.workflow == "wf"  # type: ignore[attr-defined]
        assert record.step == "charge"  # type: ignore[attr-defined]
        assert record.attempt == 2  # type: ignore[attr-defined]
        assert "secret-card-number" not in record.getMessage()


def test_a_run_times_steps_only_for_an_observer_that_watches_them() -> None:
    log = logging.getLogger("salvador.test.watch")
    log.setLevel(logging.INFO)
    try:
        assert not watches_steps(Observer())
        assert not watches_steps(LoggingObserver(log))  # its step lines are DEBUG lines
        assert watches_steps(Recorder())
        assert watches_steps(Observers([Observer(), Recorder()]))
        assert not watches_steps(Observers([Observer(), LoggingObserver(log)]))

        class Finishes(LoggingObserver):  # a subclass may log steps at any level
            def step_finished(self, task: Task, step: str, **kw: Any) -> None:
                pass

        assert watches_steps(Finishes(log))
        log.setLevel(logging.DEBUG)
        assert watches_steps(LoggingObserver(log))
    finally:
        log.setLevel(logging.NOTSET)


@pytest.mark.asyncio
async def test_step_lines_are_logged_at_debug_and_a_failed_step_reports_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fails(ctx: Any) -> None:
        raise ValueError("no")

    wf = Workflow("debug-steps").step("one", lambda ctx: 1).step("two", fails)
    engine = Engine.from_url("memory://", workflows=[wf], poll_interval=0.05)
    with caplog.at_level(logging.DEBUG, logger="salvador"):
        async with engine:
            task_id = await engine.submit(wf)
            worker = asyncio.create_task(engine.run(handle_signals=False))
            task = await settled(engine, task_id)
            engine.stop()
            await worker
    assert task.status.value == "failed"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert f"task {task_id}: step 'one' attempt 1 started" in lines
    assert any(line.startswith(f"task {task_id}: step 'one' attempt 1 returned in ") for line in lines)
    assert any("step 'two' attempt 1 raised ValueError: no in " in line for line in lines)
