"""Conformance checks for the optional `BatchClaims.claim_many`: several leases in one call,
each held to everything `claim` guarantees.

A backend without `claim_many` skips them, saying so; the worker then claims one task per
call. A backend with it is held to all of them: the worker trusts `claim_many` to return
no more than it asked for (it asks for exactly as many tasks as it has free slots).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from salvador_core.errors import LeaseLostError
from salvador_core.protocols import BatchClaims
from salvador_core.task import utcnow
from salvador_core.testing.base import ConformanceBase, checks, ids

asyncio_check = pytest.mark.asyncio


@checks
class BatchClaimChecks(ConformanceBase):
    """`claim_many` keeps every guarantee of `claim`, and never exceeds its limit."""

    def require_batch(self, backend: Any) -> BatchClaims:
        """The backend as `BatchClaims`, or skip: the worker uses `claim_many` exactly when a
        backend has it, so it is checked exactly then."""
        if not isinstance(backend, BatchClaims):
            pytest.skip(
                "backend has no optional BatchClaims.claim_many(); the worker claims one task per call"
            )
        return backend

    async def _queued(self, backend: Any, workflow: str = "wf", **fields: Any) -> str:
        task = await backend.create(self.make_task(workflow, **fields))
        await backend.enqueue(workflow, task.id, not_before=task.not_before)
        return str(task.id)

    @asyncio_check
    async def test_claim_many_returns_at_most_its_limit_oldest_first(self, backend: Any) -> None:
        batch = self.require_batch(backend)
        queued = [await self._queued(backend) for _ in range(7)]
        first = await batch.claim_many("wf", 3, lease=30, wait=2)
        assert ids(first) == queued[:3], (
            f"claim_many(limit=3) on 7 due tasks returned {len(first)} claim(s), "
            f"{'in another order than' if len(first) == 3 else 'not'} the 3 oldest: it must "
            "return at most `limit` claims, oldest due first"
        )
        rest = await batch.claim_many("wf", 10, lease=30, wait=2)
        assert ids(rest) == queued[3:], "claim_many(limit=10) did not return the 4 tasks left, oldest first"
        assert await batch.claim_many("wf", 5, lease=30, wait=0) == []

    @asyncio_check
    async def test_claim_many_refuses_a_limit_below_one(self, backend: Any) -> None:
        batch = self.require_batch(backend)
        await self._queued(backend)
        for limit in (0, -1):
            with pytest.raises(ValueError, match="limit"):
                await batch.claim_many("wf", limit, lease=30, wait=0)
        assert len(await batch.claim_many("wf", 1, lease=30, wait=2)) == 1, "a refused call took the task"

    @asyncio_check
    async def test_each_batch_claim_is_what_claim_returns(self, backend: Any) -> None:
        batch = self.require_batch(backend)
        queued = [await self._queued(backend) for _ in range(3)]
        before = time.time()
        claims = await batch.claim_many("wf", 3, lease=10, wait=2)
        assert ids(claims) == queued
        for claim, task_id in zip(claims, queued, strict=True):
            assert (claim.workflow, claim.deliveries) == ("wf", 1)
            assert before + 5 < claim.deadline < time.time() + 15, "deadline is not about lease seconds away"
            if claim.task is not None:
                assert (claim.task.id, claim.task.version) == (task_id, 1)
        extended, acked, released = claims
        await backend.extend(extended, lease=30)
        await backend.ack(acked)
        await backend.release(released)
        again = await self.claim_soon(backend, "wf", lease=30)
        assert (again.task_id, again.deliveries) == (released.task_id, 2), (
            "a batch-claimed task released by its claim is not claimable again at once"
        )
        assert await backend.claim("wf", lease=5, wait=0.2) is None, (
            "an acked or extended batch claim was delivered again"
        )
        with pytest.raises(LeaseLostError):
            await backend.ack(acked)

    @asyncio_check
    async def test_concurrent_claim_many_calls_never_deliver_a_task_twice(self, backend: Any) -> None:
        batch = self.require_batch(backend)
        queued = [await self._queued(backend) for _ in range(60)]
        got: list[str] = []
        sizes: list[int] = []

        async def claimer() -> None:
            while claims := await batch.claim_many("wf", 4, lease=30, wait=0.3):
                sizes.append(len(claims))
                got.extend(ids(claims))

        await asyncio.gather(*(claimer() for _ in range(6)))
        twice = sorted(t for t, n in Counter(got).items() if n > 1)
        missing = sorted(set(queued) - set(got))
        assert (twice, missing) == ([], []), (
            f"6 concurrent claim_many calls got {len(twice)} of 60 tasks more than once and "
            f"{len(missing)} never"
        )
        assert max(sizes) <= 4, f"claim_many(limit=4) returned {max(sizes)} claims"

    @asyncio_check
    async def test_waiting_claim_many_is_woken_by_an_enqueue(self, backend: Any) -> None:
        batch = self.require_batch(backend)
        waiter = asyncio.create_task(batch.claim_many("wf", 5, lease=5, wait=8))
        await asyncio.sleep(0.2)
        assert not waiter.done(), "claim_many(wait=8) returned before anything was enqueued"
        task_id = await self._queued(backend)
        claims = await asyncio.wait_for(waiter, 6)
        assert ids(claims) == [task_id]

    @asyncio_check
    async def test_claim_many_gives_up_after_its_wait(self, backend: Any) -> None:
        batch = self.require_batch(backend)
        started = time.monotonic()
        assert await batch.claim_many("wf", 5, lease=5, wait=0.3) == []
        assert time.monotonic() - started >= 0.25, "claim_many gave up before its wait was over"

    @asyncio_check
    async def test_claim_many_holds_back_tasks_not_yet_due(self, backend: Any) -> None:
        batch = self.require_batch(backend)
        later = await self._queued(backend, not_before=utcnow() + timedelta(seconds=0.8))
        now = await self._queued(backend)
        queued_at = time.monotonic()
        assert ids(await batch.claim_many("wf", 5, lease=30, wait=2)) == [now], (
            "claim_many returned a task whose not_before had not come, or missed a due one"
        )
        claims = await batch.claim_many("wf", 5, lease=30, wait=3)
        assert ids(claims) == [later]
        assert time.monotonic() - queued_at >= 0.7, "a delayed task was delivered early"

    @asyncio_check
    async def test_claim_many_redelivers_an_expired_lease(self, backend: Any) -> None:
        batch = self.require_batch(backend)
        task_id = await self._queued(backend)
        (old,) = await batch.claim_many("wf", 3, lease=30, wait=2)
        await self.expire_lease(backend, old)
        again = await batch.claim_many("wf", 3, lease=30, wait=2)
        assert [(c.task_id, c.deliveries) for c in again] == [(task_id, 2)]
        with pytest.raises(LeaseLostError):
            await backend.extend(old, lease=30)
