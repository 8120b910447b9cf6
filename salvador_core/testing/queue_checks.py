"""Conformance checks for `TaskQueue` (leases, delays, re-delivery) and the atomic `Backend`
shortcuts (submit, requeue, settle)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from salvador_core.errors import ConflictError, LeaseLostError
from salvador_core.task import Claim, TaskStatus, utcnow
from salvador_core.testing.base import AWKWARD_NAMES, ConformanceBase, checks, ids

asyncio_check = pytest.mark.asyncio


@checks
class QueueChecks(ConformanceBase):
    """Every `TaskQueue` guarantee of `salvador_core.protocols`, and `Backend`'s atomicity."""

    async def _queued(self, backend: Any, workflow: str = "wf", **fields: Any) -> str:
        """Create and enqueue a task the non-atomic way; its id."""
        task = await backend.create(self.make_task(workflow, **fields))
        await backend.enqueue(workflow, task.id, not_before=task.not_before)
        return str(task.id)

    @asyncio_check
    async def test_claim_leases_an_enqueued_task(self, backend: Any) -> None:
        task_id = await self._queued(backend)
        before = time.time()
        claim = await self.claim_soon(backend, "wf", lease=10)
        assert (claim.task_id, claim.workflow, claim.deliveries) == (task_id, "wf", 1)
        assert before + 5 < claim.deadline < time.time() + 15, "deadline is not about lease seconds away"
        if claim.task is not None:
            assert claim.task.id == task_id
            assert claim.task.version == 1

    @asyncio_check
    async def test_claim_returns_none_when_nothing_is_due(self, backend: Any) -> None:
        assert await backend.claim("wf", lease=5, wait=0) is None
        started = time.monotonic()
        assert await backend.claim("wf", lease=5, wait=0.3) is None
        assert time.monotonic() - started >= 0.25, "claim gave up before its wait was over"

    @asyncio_check
    async def test_waiting_claimer_is_woken_by_an_enqueue(self, backend: Any) -> None:
        waiter = asyncio.create_task(backend.claim("wf", lease=5, wait=8))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        task_id = await self._queued(backend)
        claim = await asyncio.wait_for(waiter, 6)
        assert claim is not None
        assert claim.task_id == task_id

    @asyncio_check
    async def test_enqueue_is_idempotent_per_task(self, backend: Any) -> None:
        task_id = await self._queued(backend)
        await backend.enqueue("wf", task_id)
        claim = await self.claim_soon(backend, "wf")
        assert claim.task_id == task_id
        await backend.enqueue("wf", task_id)  # leased: still not queued twice
        assert await backend.claim("wf", lease=5, wait=0.2) is None

    @asyncio_check
    async def test_every_task_is_delivered_to_exactly_one_of_many_concurrent_claimers(
        self, backend: Any
    ) -> None:
        queued = {await self._queued(backend) for _ in range(60)}
        got: list[str] = []

        async def claimer() -> None:
            while (claim := await backend.claim("wf", lease=30, wait=0.3)) is not None:
                got.append(claim.task_id)

        await asyncio.gather(*(claimer() for _ in range(8)))
        assert sorted(got) == sorted(queued), "a task was delivered twice or not at all"

    @asyncio_check
    async def test_extend_renews_the_lease(self, backend: Any) -> None:
        await self._queued(backend)
        claim = await self.claim_soon(backend, "wf", lease=self.short_lease)
        renewed = await backend.extend(claim, lease=30)
        assert renewed.task_id == claim.task_id
        assert renewed.deliveries == claim.deliveries
        assert renewed.deadline > time.time() + 20
        await asyncio.sleep(self.short_lease * 1.5)
        assert await backend.claim("wf", lease=5, wait=0) is None, "an extended lease expired"
        await backend.extend(renewed, lease=30)

    @asyncio_check
    async def test_expired_lease_is_redelivered_and_the_old_claim_is_void(self, backend: Any) -> None:
        task_id = await self._queued(backend)
        old = await self.claim_soon(backend, "wf", lease=30)
        await self.expire_lease(backend, old)
        new = await self.claim_soon(backend, "wf", lease=30)
        assert (new.task_id, new.deliveries) == (task_id, 2)
        for stale in (backend.extend(old, lease=30), backend.ack(old), backend.release(old)):
            with pytest.raises(LeaseLostError):
                await stale
        await backend.extend(new, lease=30)  # the new holder is untouched by the stale calls
        assert await backend.claim("wf", lease=5, wait=0) is None

    @asyncio_check
    async def test_lease_expires_on_the_clock_without_a_heartbeat(self, backend: Any) -> None:
        task_id = await self._queued(backend)
        claim = await self.claim_soon(backend, "wf", lease=self.short_lease)
        again = await self.claim_soon(backend, "wf", lease=30, wait=self.short_lease * 5 + 2)
        assert again.task_id == task_id
        assert again.deliveries == 2
        with pytest.raises(LeaseLostError):
            await backend.extend(claim, lease=30)

    @asyncio_check
    async def test_acked_task_is_never_delivered_again(self, backend: Any) -> None:
        await self._queued(backend)
        claim = await self.claim_soon(backend, "wf", lease=self.short_lease)
        await backend.ack(claim)
        assert await backend.claim("wf", lease=5, wait=self.short_lease * 2.5) is None
        with pytest.raises(LeaseLostError):
            await backend.ack(claim)

    @asyncio_check
    async def test_release_makes_the_task_claimable_at_once(self, backend: Any) -> None:
        task_id = await self._queued(backend)
        claim = await self.claim_soon(backend, "wf")
        await backend.release(claim)
        again = await self.claim_soon(backend, "wf", wait=1)
        assert (again.task_id, again.deliveries) == (task_id, 2)
        with pytest.raises(LeaseLostError):
            await backend.extend(claim, lease=5)

    @asyncio_check
    async def test_release_with_delay_holds_the_task_back_without_a_lease(self, backend: Any) -> None:
        task_id = await self._queued(backend)
        claim = await self.claim_soon(backend, "wf", lease=self.short_lease)
        released = time.monotonic()
        await backend.release(claim, delay=0.8)
        with pytest.raises(LeaseLostError):
            await backend.extend(claim, lease=5)  # a delayed task is held by no one
        # The delay is not a lease: past the old lease's length it is still not claimable.
        assert await backend.claim("wf", lease=5, wait=0.5) is None
        again = await self.claim_soon(backend, "wf", wait=3)
        assert again.task_id == task_id
        assert time.monotonic() - released >= 0.7, "a delayed task was delivered early"

    @asyncio_check
    async def test_enqueue_with_not_before_delays_delivery(self, backend: Any) -> None:
        later = await self._queued(backend, not_before=utcnow() + timedelta(seconds=0.8))
        now = await self._queued(backend, not_before=utcnow() - timedelta(seconds=5))
        queued_at = time.monotonic()
        first = await self.claim_soon(backend, "wf", wait=0)
        assert first.task_id == now, "a task due in the past was not claimable at once"
        assert await backend.claim("wf", lease=5, wait=0.3) is None
        second = await self.claim_soon(backend, "wf", wait=3)
        assert second.task_id == later
        assert time.monotonic() - queued_at >= 0.7, "a delayed task was delivered early"

    @asyncio_check
    async def test_workflows_are_isolated_queues(self, backend: Any) -> None:
        queued = {name: await self._queued(backend, name) for name in AWKWARD_NAMES}
        for name in AWKWARD_NAMES:
            claims = await self.drain(backend, name)
            assert ids(claims) == [queued[name]], f"queue {name!r} leaked or lost tasks"
            assert all(c.workflow == name for c in claims)

    @asyncio_check
    async def test_deleted_task_is_not_delivered(self, backend: Any) -> None:
        task_id = await self._queued(backend)
        assert await backend.delete(task_id)
        claim = await backend.claim("wf", lease=5, wait=0.2)
        # A backend may still hand out the id once; the engine acks a missing task on sight.
        if claim is not None:
            assert claim.task_id == task_id
            await backend.ack(claim)
        assert await backend.claim("wf", lease=5, wait=0.2) is None

    # -- the atomic Backend shortcuts ------------------------------------------------------

    @asyncio_check
    async def test_submit_stores_and_queues_in_one_step(self, backend: Any) -> None:
        self.require_atomic(backend)
        task = self.make_task(idempotency_key="once")
        stored = await backend.submit(task)
        assert stored.version == 1
        duplicate = await backend.submit(self.make_task(idempotency_key="once"))
        assert duplicate.id == task.id
        assert ids(await self.drain(backend, "wf")) == [task.id], "a duplicate submit was queued"

    @asyncio_check
    async def test_submit_with_not_before_is_delayed(self, backend: Any) -> None:
        self.require_atomic(backend)
        task = await backend.submit(self.make_task(not_before=utcnow() + timedelta(seconds=0.6)))
        assert await backend.claim("wf", lease=5, wait=0.2) is None
        assert (await self.claim_soon(backend, "wf", wait=3)).task_id == task.id

    @asyncio_check
    async def test_requeue_is_fenced_and_queues_the_task(self, backend: Any) -> None:
        self.require_atomic(backend)
        task = await backend.submit(self.make_task())
        claim = await self.claim_soon(backend, "wf")
        failed = await backend.settle(task.evolve(status=TaskStatus.FAILED), 1, claim)
        with pytest.raises(ConflictError):
            await backend.requeue(failed.evolve(status=TaskStatus.PENDING), 1)
        assert await backend.claim("wf", lease=5, wait=0.1) is None, "a refused requeue queued"
        again = await backend.requeue(failed.evolve(status=TaskStatus.PENDING), failed.version)
        assert again.version == failed.version + 1
        assert (await self.claim_soon(backend, "wf")).task_id == task.id

    @asyncio_check
    async def test_settle_writes_and_acks_together(self, backend: Any) -> None:
        self.require_atomic(backend)
        task = await backend.submit(self.make_task())
        claim = await self.claim_soon(backend, "wf", lease=self.short_lease)
        done = await backend.settle(task.evolve(status=TaskStatus.COMPLETED), 1, claim)
        assert done.version == 2
        stored = await backend.get(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.COMPLETED
        assert await backend.claim("wf", lease=5, wait=self.short_lease * 2.5) is None

    @asyncio_check
    async def test_settle_with_stale_version_writes_nothing_and_keeps_the_lease(self, backend: Any) -> None:
        self.require_atomic(backend)
        task = await backend.submit(self.make_task())
        claim = await self.claim_soon(backend, "wf")
        await backend.update(task.evolve(step=1), 1)
        with pytest.raises(ConflictError):
            await backend.settle(task.evolve(status=TaskStatus.COMPLETED), 1, claim)
        stored = await backend.get(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.PENDING
        await backend.extend(claim, lease=5)  # still leased: nothing was acked

    @asyncio_check
    async def test_settle_after_losing_the_lease_still_writes(self, backend: Any) -> None:
        self.require_atomic(backend)
        task = await backend.submit(self.make_task())
        old: Claim = await self.claim_soon(backend, "wf")
        await self.expire_lease(backend, old)
        new = await self.claim_soon(backend, "wf")
        done = await backend.settle(task.evolve(status=TaskStatus.COMPLETED), 1, old)
        assert done.status is TaskStatus.COMPLETED
        await backend.ack(new)  # the new holder finds a terminal task and acks it
        assert await backend.claim("wf", lease=5, wait=0.1) is None
