"""Conformance checks for `TaskQueue` (leases, delays, re-delivery) and the atomic `Backend`
shortcuts (submit, requeue, settle)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import pytest

from salvador_core.errors import ConflictError, LeaseLostError
from salvador_core.task import Claim, TaskStatus, utcnow
from salvador_core.testing.base import AWKWARD_NAMES, ConformanceBase, checks, ids

asyncio_check = pytest.mark.asyncio

#: An idle claim wait may cost at most this share of the CPU time that a bare loop sleeping
#: 1 ms between polls costs on the same machine. Measured on a 2-core CI box: a 1 ms poll
#: costs about 5% of a core, memory:// and Redis well under 0.5%, SQLite (which checks a
#: change counter every 50 ms for other processes' commits) about 1%. Relative to a
#: yardstick measured in the same run, so a slow or loaded machine moves both sides.
BUSY_POLL_SHARE = 0.5


async def _cpu_share_of_a_1ms_poll(seconds: float) -> float:
    """CPU time per wall-clock second of a loop that sleeps 1 ms between empty polls."""
    cpu, started = time.process_time(), time.monotonic()
    while time.monotonic() - started < seconds:  # noqa: ASYNC110 - the poll is the point
        await asyncio.sleep(0.001)
    return (time.process_time() - cpu) / (time.monotonic() - started)


async def _lease_lost(call: Awaitable[Any], what: str, how: str) -> None:
    """Await `call`, which must raise `LeaseLostError`; else fail saying what is wrong."""
    try:
        await call
    except LeaseLostError:
        return
    raise AssertionError(
        f"{what} accepted a claim whose lease {how} before anyone claimed the task again; it "
        "must raise LeaseLostError and change nothing. An expired lease is void at once, not "
        "when the next claimer takes the task: its holder may be a worker paused past its lease."
    )


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
    async def test_lease_expired_through_the_back_door_is_void_before_anyone_claims_the_task_again(
        self, backend: Any
    ) -> None:
        queued = [await self._queued(backend) for _ in range(3)]
        extended, acked, released = [await self.claim_soon(backend, "wf", lease=30) for _ in queued]
        for claim in (extended, acked, released):
            await self.expire_lease(backend, claim)
        await _lease_lost(backend.extend(extended, lease=30), "extend", "had expired")
        await _lease_lost(backend.ack(acked), "ack", "had expired")
        await _lease_lost(backend.release(released, delay=60), "release", "had expired")
        again = await self.drain(backend, "wf")
        assert sorted(ids(again)) == sorted(queued), (
            "a task whose lease had expired is not claimable again after a stale extend, ack "
            "or release: the stale call changed the queue"
        )
        assert all(c.deliveries == 2 for c in again), [c.deliveries for c in again]

    @asyncio_check
    async def test_lease_run_out_on_the_clock_is_void_before_anyone_claims_the_task_again(
        self, backend: Any
    ) -> None:
        queued = [await self._queued(backend) for _ in range(3)]
        extended, acked, released = [
            await self.claim_soon(backend, "wf", lease=self.short_lease) for _ in queued
        ]
        await asyncio.sleep(self.short_lease + max(0.2, self.short_lease / 2))
        how = f"of {self.short_lease}s had run out on the clock"
        await _lease_lost(backend.extend(extended, lease=30), "extend", how)
        await _lease_lost(backend.ack(acked), "ack", how)
        await _lease_lost(backend.release(released, delay=60), "release", how)
        again = await self.drain(backend, "wf")
        assert sorted(ids(again)) == sorted(queued), (
            "a task whose lease ran out is not claimable again after a stale extend, ack or "
            "release: the stale call changed the queue"
        )

    @asyncio_check
    async def test_idle_claim_wait_does_not_busy_poll(self, backend: Any) -> None:
        assert await backend.claim("wf", lease=5, wait=0) is None  # connected and warmed up
        yardstick = await _cpu_share_of_a_1ms_poll(0.3)
        cpu, started = time.process_time(), time.monotonic()
        assert await backend.claim("wf", lease=5, wait=1.0) is None
        share = (time.process_time() - cpu) / (time.monotonic() - started)
        bound = yardstick * BUSY_POLL_SHARE
        assert share <= bound, (
            f"claim(wait=1.0) with nothing to claim used {share:.1%} of a core (process CPU time, "
            f"all threads); a loop sleeping 1 ms between polls costs {yardstick:.1%} here, and the "
            f"bound is {BUSY_POLL_SHARE:.0%} of that, {bound:.1%}. claim must sleep until an enqueue "
            "or a due time wakes it, not poll the backend in a tight loop."
        )

    @asyncio_check
    async def test_one_claimer_gets_due_tasks_oldest_first(self, backend: Any) -> None:
        ready = [await self._queued(backend) for _ in range(4)]
        later = await self._queued(backend, not_before=utcnow() + timedelta(seconds=0.3))
        sooner = await self._queued(backend, not_before=utcnow() + timedelta(seconds=0.15))
        await asyncio.sleep(0.4)
        names = {tid: f"ready-{n}" for n, tid in enumerate(ready, 1)}
        names.update({sooner: "due-after-0.15s", later: "due-after-0.3s"})
        got = [names.get(tid, tid) for tid in ids(await self.drain(backend, "wf"))]
        expected = [names[tid] for tid in (*ready, sooner, later)]
        assert got == expected, (
            f"one claimer got {got}; oldest due first is {expected}. A queue that hands out "
            "newer tasks first lets an old task starve behind a steady stream of new ones."
        )

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
    async def test_enqueue_moves_a_waiting_task_earlier_never_later(self, backend: Any) -> None:
        task_id = await self._queued(backend, not_before=utcnow() + timedelta(hours=1))
        await backend.enqueue("wf", task_id, not_before=utcnow() + timedelta(hours=2))
        assert await backend.claim("wf", lease=5, wait=0.2) is None, "a later due time was taken"
        await backend.enqueue("wf", task_id)
        claim = await backend.claim("wf", lease=5, wait=2)
        assert claim is not None, (
            "a task delayed an hour and enqueued again without a delay is still waiting: enqueue "
            "must move a waiting task earlier (a cancelled, delayed task requeued must run now)"
        )
        assert claim.task_id == task_id
        await backend.enqueue("wf", task_id)  # leased: neither moved nor queued twice
        assert await backend.claim("wf", lease=5, wait=0.2) is None
        await backend.ack(claim)

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

    # -- several instances on one storage (capability `shared`) ---------------------------

    @asyncio_check
    async def test_claims_racing_on_two_instances_never_deliver_a_task_twice(self, backend: Any) -> None:
        self.require("shared")
        queued = [await self._queued(backend) for _ in range(20)]
        async with self.second_instance(backend) as other:
            queued += [await self._queued(other) for _ in range(20)]
            got: list[str] = []

            async def claimer(instance: Any) -> None:
                while (claim := await instance.claim("wf", lease=30, wait=0.3)) is not None:
                    got.append(claim.task_id)

            await asyncio.gather(*(claimer(i) for i in (backend, other) for _ in range(4)))
        twice = sorted(t for t, n in Counter(got).items() if n > 1)
        missing = sorted(set(queued) - set(got))
        assert (twice, missing) == ([], []), (
            f"claimers on two instances of one storage got {len(twice)} of {len(queued)} tasks more "
            f"than once and {len(missing)} never: each instance leases from its own copy of the "
            "queue instead of the shared storage"
        )

    @asyncio_check
    async def test_acks_racing_on_two_instances_take_effect_once(self, backend: Any) -> None:
        self.require("shared")
        queued = [await self._queued(backend) for _ in range(10)]
        async with self.second_instance(backend) as other:
            claims = await self.drain(other, "wf", lease=30)
            assert sorted(ids(claims)) == sorted(queued), (
                "tasks enqueued through one instance are not claimable through another on the "
                "same storage"
            )
            outcomes = await asyncio.gather(
                *(instance.ack(c) for c in claims for instance in (backend, other)), return_exceptions=True
            )
            unexpected = [o for o in outcomes if o is not None and not isinstance(o, LeaseLostError)]
            assert not unexpected, f"ack raised {unexpected[0]!r}"
            wins = sum(o is None for o in outcomes)
            assert wins == len(claims), (
                f"each of {len(claims)} claims was acked through two instances at once and {wins} "
                "acks succeeded; exactly one per claim must, the other raising LeaseLostError"
            )
            for instance in (backend, other):
                assert await instance.claim("wf", lease=5, wait=0) is None, (
                    "an acked task was delivered again through an instance of the same storage"
                )

    @asyncio_check
    async def test_claimer_waiting_on_one_instance_gets_a_task_enqueued_through_another(
        self, backend: Any
    ) -> None:
        self.require("shared")
        async with self.second_instance(backend) as other:
            waiter = asyncio.create_task(backend.claim("wf", lease=5, wait=5))
            await asyncio.sleep(0.2)
            task_id = await self._queued(other)
            claim = await asyncio.wait_for(waiter, 8)
        assert (claim.task_id if claim is not None else None) == task_id, (
            "a claimer waiting 5 s on one instance never got the task enqueued through another "
            "instance on the same storage: a waiting claimer must notice other processes' enqueues"
        )

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
