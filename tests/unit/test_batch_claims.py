"""Batch claims: how the worker uses `BatchClaims.claim_many`, how `SplitBackend` offers it,
and that the conformance suite fails a backend whose `claim_many` breaks its contract.

The backend is the real memory backend; `Recording` only notes each `claim_many` call (the
limit asked for, the slots free at that moment, the claims returned) before answering it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from salvador_core import Engine, StepContext, TaskStatus, Workflow
from salvador_core.backends.memory import MemoryBackend
from salvador_core.protocols import BatchClaims
from salvador_core.split import SplitBackend
from salvador_core.task import Claim, Task, new_task_id
from salvador_core.testing.batch_checks import BatchClaimChecks
from salvador_core.testing.hooks import MemoryHooks
from tests.helpers.custom_store import DictBackend

pytestmark = pytest.mark.asyncio


@dataclass
class Call:
    limit: int
    busy: int  # runs in progress when the call was made
    got: int = 0


class Recording(MemoryBackend):
    """The memory backend, noting each `claim_many` call; `before_return` runs after the
    claims are taken and before they are handed back."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.engine: Engine | None = None
        self.before_return: Callable[[], None] | None = None

    async def claim_many(self, workflow: str, limit: int, *, lease: float, wait: float) -> list[Claim]:
        busy = len(self.engine.active_runs()) if self.engine is not None else 0
        call = Call(limit, busy)
        self.calls.append(call)
        claims = await super().claim_many(workflow, limit, lease=lease, wait=wait)
        call.got = len(claims)
        if claims and self.before_return is not None:
            self.before_return()
        return claims


class Gate:
    """A workflow whose one step waits until the gate opens, counting the runs inside."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.inside = 0
        self.most_inside = 0
        self.workflow = Workflow("gated").step("wait", self._step)

    async def _step(self, ctx: StepContext) -> None:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await self.open.wait()
        finally:
            self.inside -= 1


@asynccontextmanager
async def running(engine: Engine) -> AsyncIterator[asyncio.Task[None]]:
    await engine.open()
    worker = asyncio.create_task(engine.run(handle_signals=False))
    try:
        yield worker
    finally:
        engine.stop()
        await asyncio.wait_for(worker, 10)
        await engine.close()


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def engine_on(backend: Recording, gate: Gate, concurrency: int) -> Engine:
    engine = Engine(
        backend, workflows=[gate.workflow], concurrency=concurrency, poll_interval=0.05, lease=5,
        drain_timeout=0.2, observers=[],
    )
    backend.engine = engine
    return engine


async def statuses(engine: Engine, ids: list[str]) -> list[TaskStatus]:
    found = [await engine.get_task(task_id) for task_id in ids]
    return [task.status for task in found if task is not None]


# -- the worker -------------------------------------------------------------------------


async def test_the_worker_claims_a_batch_as_large_as_its_free_slots_and_never_larger() -> None:
    backend, gate = Recording(), Gate()
    engine = engine_on(backend, gate, concurrency=5)
    await backend.open()
    ids = [await engine.submit(gate.workflow, {}) for _ in range(12)]
    async with running(engine):
        await eventually(lambda: gate.inside == 5, "5 runs in progress")
        await asyncio.sleep(0.2)  # a worker that over-claims would do it now
        gate.open.set()
        await eventually(lambda: sum(c.got for c in backend.calls) >= 12, "every task claimed")
        await eventually(lambda: not engine.active_runs(), "every run finished")
        assert await statuses(engine, ids) == [TaskStatus.COMPLETED] * 12
    assert gate.most_inside == 5
    first = backend.calls[0]
    assert (first.limit, first.got) == (5, 5), "the first claim did not ask for all 5 free slots at once"
    for call in backend.calls:
        assert call.got <= call.limit
        assert call.limit + call.busy <= 5, (
            f"the worker asked for {call.limit} tasks with {call.busy} of its 5 slots busy: a "
            "batch claim must never hold a task that no slot is free to run"
        )
    batches = [c.got for c in backend.calls if c.got]
    assert len(batches) < 12, f"12 tasks took {len(batches)} claims: the worker did not batch"


async def test_the_worker_gives_back_the_slots_a_batch_got_no_task_for() -> None:
    backend, gate = Recording(), Gate()
    engine = engine_on(backend, gate, concurrency=4)
    await backend.open()
    async with running(engine):
        first = await engine.submit(gate.workflow, {})
        await eventually(lambda: gate.inside == 1, "the first run")
        calls_before = len(backend.calls)
        await eventually(lambda: len(backend.calls) > calls_before, "the next claim")
        assert backend.calls[-1].limit == 3, (
            "with 1 of 4 slots busy the next claim must ask for the 3 others: the slots the "
            "first batch got no task for were not given back"
        )
        more = [await engine.submit(gate.workflow, {}) for _ in range(3)]
        await eventually(lambda: gate.inside == 4, "4 runs")
        gate.open.set()
        await eventually(lambda: not engine.active_runs(), "every run finished")
        assert await statuses(engine, [first, *more]) == [TaskStatus.COMPLETED] * 4


async def test_a_stopping_worker_releases_the_batch_it_will_not_run() -> None:
    backend, gate = Recording(), Gate()
    engine = engine_on(backend, gate, concurrency=3)
    await backend.open()
    ids = [await engine.submit(gate.workflow, {}) for _ in range(3)]
    backend.before_return = engine.stop  # the worker is told to stop while the claim returns
    async with running(engine) as worker:
        await asyncio.wait_for(worker, 5)
    assert gate.most_inside == 0, "a stopping worker ran a task it claimed"
    assert [(c.limit, c.got) for c in backend.calls] == [(3, 3)]
    backend.before_return = None
    await backend.open()  # closed with the engine; a memory backend keeps its tasks
    again = await backend.claim_many("gated", 5, lease=5, wait=0)
    assert sorted(c.task_id for c in again) == sorted(ids), (
        "tasks claimed by a stopping worker are not claimable at once: it must release them"
    )
    assert all(c.deliveries == 2 for c in again)


async def test_a_backend_without_claim_many_is_claimed_one_task_per_call() -> None:
    engine = Engine(DictBackend(), workflows=[Workflow("plain").step("s", _nothing)], concurrency=4,
                    poll_interval=0.05, observers=[])
    assert not isinstance(engine.backend, BatchClaims)
    async with running(engine):
        ids = [await engine.submit("plain", {}) for _ in range(6)]
        await eventually(lambda: not engine.active_runs(), "the runs")

        async def all_done() -> bool:
            return await statuses(engine, ids) == [TaskStatus.COMPLETED] * 6

        deadline = asyncio.get_running_loop().time() + 5
        while not await all_done():
            assert asyncio.get_running_loop().time() < deadline, "tasks did not complete"
            await asyncio.sleep(0.01)


async def _nothing(ctx: StepContext) -> None:
    return None


# -- SplitBackend ------------------------------------------------------------------------


async def test_a_split_backend_offers_claim_many_exactly_when_its_queue_does() -> None:
    assert not isinstance(SplitBackend(DictBackend(), DictBackend()), BatchClaims)
    store, queue = MemoryBackend(), MemoryBackend()
    split = SplitBackend(store, queue)
    assert isinstance(split, BatchClaims)
    await split.open()
    await queue.open()
    tasks = [await split.submit(Task(id=new_task_id(), workflow="wf")) for _ in range(3)]
    claims = await split.claim_many("wf", 2, lease=5, wait=0)
    assert [c.task_id for c in claims] == [t.id for t in tasks[:2]]
    assert [c.task_id for c in await queue.claim_many("wf", 5, lease=5, wait=0)] == [tasks[2].id]


# -- the suite fails a broken claim_many -------------------------------------------------


class OverClaims(MemoryBackend):
    """Returns one claim more than asked for whenever it can."""

    async def claim_many(self, workflow: str, limit: int, *, lease: float, wait: float) -> list[Claim]:
        return await super().claim_many(workflow, limit + 1, lease=lease, wait=wait)


class BatchTwice(MemoryBackend):
    """Leases each task of a batch, but leaves it ready for the next claimer too."""

    async def claim_many(self, workflow: str, limit: int, *, lease: float, wait: float) -> list[Claim]:
        claims = await super().claim_many(workflow, limit, lease=lease, wait=wait)
        ready = self._ready.setdefault(workflow, deque())
        ready.extend(c.task_id for c in claims if c.deliveries == 1)
        return claims


class NewestBatchFirst(MemoryBackend):
    """Hands a batch out newest first."""

    async def claim_many(self, workflow: str, limit: int, *, lease: float, wait: float) -> list[Claim]:
        return list(reversed(await super().claim_many(workflow, limit, lease=lease, wait=wait)))


class NoLimitCheck(MemoryBackend):
    """Takes a limit of 0 as "no tasks" instead of refusing it."""

    async def claim_many(self, workflow: str, limit: int, *, lease: float, wait: float) -> list[Claim]:
        if limit < 1:
            return []
        return await super().claim_many(workflow, limit, lease=lease, wait=wait)


class Checks(MemoryHooks, BatchClaimChecks):
    capabilities = frozenset({"atomic"})


@pytest.mark.parametrize(
    ("backend_class", "check", "message"),
    [
        (OverClaims, "test_claim_many_returns_at_most_its_limit_oldest_first", "at most `limit` claims"),
        (OverClaims, "test_concurrent_claim_many_calls_never_deliver_a_task_twice", "returned 5 claims"),
        (BatchTwice, "test_concurrent_claim_many_calls_never_deliver_a_task_twice", "more than once"),
        (NewestBatchFirst, "test_claim_many_returns_at_most_its_limit_oldest_first", "oldest due first"),
        (NoLimitCheck, "test_claim_many_refuses_a_limit_below_one", "DID NOT RAISE"),
    ],
)
async def test_the_suite_fails_a_broken_claim_many(backend_class: type, check: str, message: str) -> None:
    backend: Any = backend_class()
    await backend.open()
    with pytest.raises((AssertionError, pytest.fail.Exception), match=message):
        await getattr(Checks(), check)(backend)


async def test_every_batch_check_passes_on_the_memory_backend() -> None:
    names = [name for name in dir(BatchClaimChecks) if name.startswith("test_")]
    assert len(names) >= 8
    for name in names:
        async with MemoryBackend() as backend:
            await getattr(Checks(), name)(backend)
