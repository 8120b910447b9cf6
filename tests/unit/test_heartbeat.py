"""What the heartbeat logs: nothing about a lease the run's own final write ended, and, when
the backend does not answer in time, which call it was (never a bare "(TimeoutError)").

Each backend here is the memory backend with one call made to misbehave on cue, so the
interleaving a loaded backend produces by chance happens every time.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from salvador_core import Claim, Engine, StepContext, Task, TaskStatus, Workflow
from salvador_core.backends.memory import MemoryBackend
from tests.helpers.engines import settled

LEASE = 0.6  # a beat every 0.2 s


class BeatOvertakenByTheFinalWrite(MemoryBackend):
    """The run's first beat reaches the backend only after the run's final write acked the
    task: a beat sent while the last step returned, overtaken by the settle (two
    connections, a group commit, a reply read first). Its extend then finds no lease."""

    def __init__(self) -> None:
        super().__init__()
        self.beat_sent = asyncio.Event()
        self.acked = asyncio.Event()
        self.beat_answered = asyncio.Event()
        self.beat_error: BaseException | None = None

    async def extend(self, claim: Claim, *, lease: float) -> Claim:
        if self.beat_sent.is_set():
            return await super().extend(claim, lease=lease)
        self.beat_sent.set()
        try:
            await self.acked.wait()
            return await super().extend(claim, lease=lease)
        except BaseException as exc:
            self.beat_error = exc
            raise
        finally:
            self.beat_answered.set()

    async def settle(self, task: Task, expected_version: int, claim: Claim) -> Task:
        stored = await super().settle(task, expected_version, claim)
        self.acked.set()
        # The settle's reply arrives after the beat's: the run hears of its own ack last.
        await asyncio.wait_for(self.beat_answered.wait(), 5)
        return stored


class ExtendTimesOut(MemoryBackend):
    """Every `extend` fails as a client library's own request timeout does."""

    async def extend(self, claim: Claim, *, lease: float) -> Claim:
        raise asyncio.TimeoutError


@pytest.mark.asyncio
async def test_a_beat_that_finds_the_lease_ended_by_the_final_write_logs_no_lease_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = BeatOvertakenByTheFinalWrite()
    runs: list[int] = []
    wf = Workflow("one-step")

    @wf.step()
    async def only(ctx: StepContext) -> str:
        runs.append(ctx.attempt)
        await asyncio.wait_for(backend.beat_sent.wait(), 5)  # return while a beat is in flight
        return "done"

    engine = Engine(backend, workflows=[wf], lease=LEASE, poll_interval=0.05, durability="off")
    with caplog.at_level(logging.INFO, logger="salvador"):
        async with engine:
            worker = asyncio.create_task(engine.run(handle_signals=False))
            task_id = await engine.submit(wf)
            await asyncio.wait_for(backend.beat_answered.wait(), 5)
            task = await settled(engine, task_id)
            engine.stop()
            await asyncio.wait_for(worker, 10)

    # The race really happened: the beat was refused because the settle had acked the task.
    assert type(backend.beat_error).__name__ == "LeaseLostError", backend.beat_error
    assert task.status is TaskStatus.COMPLETED
    assert runs == [1]
    noise = [
        f"{r.levelname}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and task_id in r.getMessage()
    ]
    assert noise == [], (
        "a task that ran its one step once and completed was reported as losing its lease: "
        f"{noise}"
    )


@pytest.mark.asyncio
async def test_a_heartbeat_the_backend_does_not_answer_says_what_timed_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = ExtendTimesOut()
    wf = Workflow("slow-step")

    @wf.step()
    async def only(ctx: StepContext) -> None:
        await asyncio.sleep(LEASE / 3 * 1.5)  # one beat falls inside the step

    engine = Engine(backend, workflows=[wf], lease=LEASE, poll_interval=0.05, durability="off")
    with caplog.at_level(logging.INFO, logger="salvador"):
        async with engine:
            worker = asyncio.create_task(engine.run(handle_signals=False))
            task_id = await engine.submit(wf)
            await settled(engine, task_id)
            engine.stop()
            await asyncio.wait_for(worker, 10)

    lines = [r.getMessage() for r in caplog.records if "heartbeat" in r.getMessage()]
    assert lines, "the failed heartbeat was not logged"
    assert all("the backend did not answer within 0.2s" in line for line in lines), lines
    assert not any(line.endswith("(TimeoutError)") for line in lines), lines


