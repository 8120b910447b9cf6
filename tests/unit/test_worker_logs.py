"""A log line about a backend call that timed out says what timed out, never only
"(TimeoutError)": a timeout raised by a client library has no message of its own."""

from __future__ import annotations

import asyncio
import builtins
import logging
import signal
import threading
from collections.abc import Callable

import pytest

from salvador_core import Claim, Engine, StepContext, Task, TaskStatus, Workflow
from salvador_core.backends.memory import MemoryBackend
from salvador_core.observe import describe
from tests.helpers.engines import settled


class ClaimTimesOutOnce(MemoryBackend):
    """The first claim fails as a client library's request timeout does."""

    timed_out = False

    async def claim_many(
        self, workflow: str, limit: int, *, lease: float, wait: float
    ) -> builtins.list[Claim]:
        if not self.timed_out:
            self.timed_out = True
            raise asyncio.TimeoutError
        return await super().claim_many(workflow, limit, lease=lease, wait=wait)


class UpdateTimesOutOnce(MemoryBackend):
    """The run's first write (taking ownership) times out; nothing is written."""

    timed_out = False

    async def update(self, task: Task, expected_version: int) -> Task:
        if not self.timed_out:
            self.timed_out = True
            raise asyncio.TimeoutError
        return await super().update(task, expected_version)


def test_describe_says_what_a_bare_timeout_means() -> None:
    assert describe(TimeoutError()) == "TimeoutError: an operation did not finish in time"
    assert describe(asyncio.TimeoutError()) == "TimeoutError: an operation did not finish in time"
    assert describe(TimeoutError("read timed out")) == "TimeoutError: read timed out"
    assert describe(ValueError("bad")) == "ValueError: bad"


@pytest.mark.asyncio
async def test_a_claim_the_backend_does_not_answer_says_what_timed_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = await _run_one(ClaimTimesOutOnce(), caplog, lease=2.0)
    assert task.status is TaskStatus.COMPLETED
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("claiming")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("claiming 'quick' failed: the backend did not answer within "), lines
    assert "(TimeoutError)" not in lines[0], lines


@pytest.mark.asyncio
async def test_a_run_whose_backend_write_times_out_says_the_backend_failed_and_what_happens_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = await _run_one(UpdateTimesOutOnce(), caplog, lease=0.4)
    assert task.status is TaskStatus.COMPLETED  # the lease expired and the task ran again
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        ": backend failed (TimeoutError: an operation did not finish in time); its lease will "
        "expire and it will be retried"
    ), lines


async def _run_one(backend: MemoryBackend, caplog: pytest.LogCaptureFixture, *, lease: float) -> Task:
    """Run one 1-step task on `backend` with logs captured; the settled task."""
    wf = Workflow("quick")

    @wf.step()
    async def only(ctx: StepContext) -> str:
        return "done"

    engine = Engine(backend, workflows=[wf], lease=lease, poll_interval=0.05, durability="off")
    with caplog.at_level(logging.INFO, logger="salvador"):
        async with engine:
            worker = asyncio.create_task(engine.run(handle_signals=False))
            task_id = await engine.submit(wf)
            try:
                return await settled(engine, task_id)
            finally:
                engine.stop()
                await asyncio.wait_for(worker, 10)


async def _run_and_stop(name: str) -> None:
    """Run a worker with signal handling (the default) on a memory engine, then stop it."""
    wf = Workflow(name).step("one", lambda ctx: None)
    engine = Engine.from_url("memory://", workflows=[wf], poll_interval=0.05)
    async with engine:
        worker = asyncio.create_task(engine.run())  # handle_signals=True
        await asyncio.sleep(0.1)
        engine.stop()
        await asyncio.wait_for(worker, 10)


@pytest.mark.asyncio
async def test_signals_the_loop_cannot_handle_are_named_in_a_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*args: object) -> None:
        raise NotImplementedError

    monkeypatch.setattr(asyncio.get_running_loop(), "add_signal_handler", unsupported)
    with caplog.at_level(logging.WARNING, logger="salvador"):
        await _run_and_stop("signals")
    warned = [r.getMessage() for r in caplog.records if "will not drain this worker" in r.getMessage()]
    assert len(warned) == 2
    assert warned[0].startswith("run(): SIGTERM will not drain")
    assert warned[1].startswith("run(): SIGINT will not drain")


@pytest.mark.asyncio
async def test_a_signal_the_loop_refuses_is_named_and_the_other_still_drains(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RuntimeError is what a loop says for a signal it cannot catch here (or when closed):
    # that signal is named, the other one is installed and removed again when run() ends.
    loop = asyncio.get_running_loop()
    add, remove = loop.add_signal_handler, loop.remove_signal_handler
    removed: list[int] = []

    def add_some(sig: int, callback: Callable[..., object], *args: object) -> None:
        if sig == signal.SIGINT:
            raise RuntimeError(f"sig {sig} cannot be caught")
        add(sig, callback, *args)

    def remove_noted(sig: int) -> bool:
        removed.append(sig)
        return remove(sig)

    monkeypatch.setattr(loop, "add_signal_handler", add_some)
    monkeypatch.setattr(loop, "remove_signal_handler", remove_noted)
    with caplog.at_level(logging.WARNING, logger="salvador"):
        await _run_and_stop("signals")
    warned = [r.getMessage() for r in caplog.records if "will not drain this worker" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].startswith("run(): SIGINT will not drain this worker (RuntimeError: sig"), warned
    assert removed == [signal.SIGTERM]


def test_a_worker_run_outside_the_main_thread_says_signals_will_not_drain_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[BaseException] = []

    def in_thread() -> None:
        try:
            asyncio.run(_run_and_stop("threaded"))
        except BaseException as exc:
            failures.append(exc)

    with caplog.at_level(logging.WARNING, logger="salvador"):
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join(15)
    assert not thread.is_alive()
    assert failures == []
    assert any(
        "SIGTERM and SIGINT will not drain this worker (run() is not in the main thread)" in r.getMessage()
        for r in caplog.records
    )
