"""A task written by someone else between its claim and the run's first write.

Backends that hand out the task with its claim (NATS takes it from the submit's message,
without a read) give the run the task as it was when claimed. If it was cancelled since,
the run's ownership write is refused: the run must then see that the task is finished,
hand its claim back as done (acked, never to be delivered again for this message), and
say nothing alarming, as it does when a claim's record is finished already.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from salvador_core import Claim, Engine, StepContext, TaskStatus, Workflow
from salvador_core.backends.memory import MemoryBackend
from tests.helpers.engines import settled


class CancelledAfterItsClaim(MemoryBackend):
    """Each claim carries its task as claimed, and the task is then cancelled by "another
    process" before the claim reaches the engine."""

    async def claim_many(self, workflow: str, limit: int, *, lease: float, wait: float) -> list[Claim]:
        claims = await super().claim_many(workflow, limit, lease=lease, wait=wait)
        carried = []
        for claim in claims:
            task = await self.get(claim.task_id)
            assert task is not None
            await self.update(task.evolve(status=TaskStatus.CANCELLED, cancel_requested=True), task.version)
            carried.append(
                Claim(claim.task_id, claim.workflow, claim.receipt, claim.deliveries, claim.deadline, task)
            )
        return carried


@pytest.mark.asyncio
async def test_a_task_cancelled_between_its_claim_and_its_run_is_acked_quietly_and_never_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []
    wf = Workflow("ship")

    @wf.step()
    async def ship(ctx: StepContext) -> None:
        ran.append(ctx.task.id)

    backend = CancelledAfterItsClaim()
    engine = Engine(backend, workflows=[wf], lease=0.5, poll_interval=0.05)
    with caplog.at_level(logging.DEBUG, logger="salvador"):
        async with engine:
            task_id = await engine.submit(wf)
            worker = asyncio.create_task(engine.run(handle_signals=False))
            task = await settled(engine, task_id)
            await asyncio.sleep(0.2)  # the run has dealt with its claim
            engine.stop()
            await worker
            assert task.status is TaskStatus.CANCELLED
            assert ran == [], "a cancelled task's step ran"
            await asyncio.sleep(0.6)  # past the lease: an unacked claim would be handed out again
            assert await MemoryBackend.claim_many(backend, "ship", 1, lease=30, wait=0) == [], (
                "the claim of a finished task was left to expire instead of being acked"
            )
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any(task_id in line for line in warnings), warnings
