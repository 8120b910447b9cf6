"""`requeue` against a claim held from before it: the task must never be lost.

The fault: a task is cancelled while queued (its queue entry stays), a worker claims it,
reads it as cancelled (terminal) and is slow to ack it; meanwhile `requeue` makes it
pending again. If requeue merely enqueues "unless already leased", the stale ack then
removes the only queue entry and the task stays pending forever. So requeue voids any
lease and any old due time, and makes the task claimable now (or at `not_before`).

The backend-level checks are deterministic, on memory, SQLite (a file) and the shared
Redis (a fresh prefix). The engine-level check runs 300 cancel/requeue cycles against a
real `Engine.run()` whose event loop is kept busy, on SQLite and on Redis, and counts the
tasks left non-terminal: there must be none.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from salvador_core import Engine, StepContext, TaskStatus, Workflow
from salvador_core.backends.memory import MemoryBackend
from salvador_core.backends.sqlite import SQLiteBackend
from salvador_core.errors import LeaseLostError
from salvador_core.protocols import Backend
from salvador_core.task import Task, new_task_id, utcnow
from tests.helpers.redis_servers import delete_prefix, shared_redis_url, unique

pytestmark = pytest.mark.asyncio

BACKENDS = ["memory", "sqlite", "redis"]


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh, empty backend of the kind named by the test's parameter."""
    kind = request.param
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 't.db'}"
    else:
        url = shared_redis_url()
        prefix = unique("salvador-requeue-")
        yield f"{url}?prefix={prefix}"
        delete_prefix(url, prefix)


@pytest_asyncio.fixture
async def backend(backend_url: str) -> AsyncIterator[Backend]:
    if backend_url == "memory://":
        opened: Any = MemoryBackend()
    elif backend_url.startswith("sqlite"):
        opened = SQLiteBackend.from_url(backend_url)
    else:
        from salvador_redis import RedisBackend

        opened = RedisBackend.from_url(backend_url)
    async with opened:
        assert isinstance(opened, Backend)
        yield opened


def new_task(**fields: Any) -> Task:
    return Task(id=new_task_id(), workflow="wf", **fields)


async def cancel_and_requeue(backend: Backend, task_id: str, **requeued: Any) -> Task:
    """What `engine.cancel` then `engine.requeue` write, at the backend level."""
    task = await backend.get(task_id)
    assert task is not None
    cancelled = await backend.update(task.evolve(status=TaskStatus.CANCELLED), task.version)
    fresh = cancelled.evolve(status=TaskStatus.PENDING, not_before=None).evolve(**requeued)
    return await backend.requeue(fresh, cancelled.version)


# -- the contract, deterministically, per backend ----------------------------------------


@pytest.mark.parametrize("backend_url", BACKENDS, indirect=True)
async def test_stale_claim_cannot_ack_away_a_requeued_task(backend: Backend) -> None:
    submitted = await backend.submit(new_task())
    stale = await backend.claim("wf", lease=30, wait=2)
    assert stale is not None
    assert stale.task_id == submitted.id
    await cancel_and_requeue(backend, submitted.id)

    with pytest.raises(LeaseLostError):
        await backend.ack(stale)
    with pytest.raises(LeaseLostError):
        await backend.extend(stale, lease=30)
    with pytest.raises(LeaseLostError):
        await backend.release(stale)

    fresh = await backend.claim("wf", lease=30, wait=2)
    assert fresh is not None
    assert fresh.task_id == submitted.id
    assert fresh.receipt != stale.receipt
    assert await backend.claim("wf", lease=30, wait=0.3) is None, "queued twice"


@pytest.mark.parametrize("backend_url", BACKENDS, indirect=True)
async def test_stale_settle_writes_but_keeps_the_requeued_entry(backend: Backend) -> None:
    submitted = await backend.submit(new_task())
    stale = await backend.claim("wf", lease=30, wait=2)
    assert stale is not None
    requeued = await cancel_and_requeue(backend, submitted.id)

    # The fence passes (nobody wrote since the requeue), so the record is written; the
    # claim is stale, so the queue entry the requeue made must stay.
    settled = await backend.settle(requeued.evolve(status=TaskStatus.CANCELLED), requeued.version, stale)
    assert settled.status is TaskStatus.CANCELLED
    fresh = await backend.claim("wf", lease=30, wait=2)
    assert fresh is not None
    assert fresh.task_id == submitted.id


@pytest.mark.parametrize("backend_url", BACKENDS, indirect=True)
async def test_task_cancelled_while_delayed_is_claimable_at_once_after_requeue(backend: Backend) -> None:
    submitted = await backend.submit(new_task(not_before=utcnow() + timedelta(hours=1)))
    assert await backend.claim("wf", lease=30, wait=0) is None
    await cancel_and_requeue(backend, submitted.id)

    began = time.monotonic()
    claim = await backend.claim("wf", lease=30, wait=2)
    assert claim is not None
    assert claim.task_id == submitted.id
    assert time.monotonic() - began < 1.0
    await backend.ack(claim)
    assert await backend.claim("wf", lease=30, wait=0.3) is None, "the old due time survived"


@pytest.mark.parametrize("backend_url", BACKENDS, indirect=True)
async def test_requeue_of_a_ready_task_queues_it_once(backend: Backend) -> None:
    submitted = await backend.submit(new_task())
    await cancel_and_requeue(backend, submitted.id)

    claim = await backend.claim("wf", lease=30, wait=2)
    assert claim is not None
    assert claim.task_id == submitted.id
    assert await backend.claim("wf", lease=30, wait=0.3) is None, "queued twice"


@pytest.mark.parametrize("backend_url", BACKENDS, indirect=True)
@pytest.mark.parametrize("claimed", [True, False], ids=["leased", "ready"])
async def test_requeue_with_not_before_replaces_lease_or_entry_with_that_due_time(
    backend: Backend, claimed: bool
) -> None:
    submitted = await backend.submit(new_task())
    stale = await backend.claim("wf", lease=30, wait=2) if claimed else None
    await cancel_and_requeue(backend, submitted.id, not_before=utcnow() + timedelta(seconds=0.6))

    if stale is not None:
        with pytest.raises(LeaseLostError):
            await backend.ack(stale)
    assert await backend.claim("wf", lease=30, wait=0.2) is None, "claimable before not_before"
    claim = await backend.claim("wf", lease=30, wait=3)
    assert claim is not None
    assert claim.task_id == submitted.id
    assert await backend.claim("wf", lease=30, wait=0.3) is None, "queued twice"


# -- the race itself: a real worker with a busy event loop --------------------------------

CYCLES = 300
CONCURRENT_CYCLES = 30


def _workflow() -> Workflow:
    wf = Workflow("wf")

    @wf.step()
    async def only(ctx: StepContext) -> int:
        return 1

    return wf


def _run_busy_worker(url: str, stop: threading.Event, started: threading.Event) -> None:
    """A worker in a thread of its own whose event loop is blocked for 4 ms in every 5 ms,
    so everything it does between a claim and its ack takes a while."""

    async def busy() -> None:
        while True:
            time.sleep(0.004)  # noqa: ASYNC251 -- blocking the loop is the point
            await asyncio.sleep(0.001)

    async def main() -> None:
        engine = Engine.from_url(url, workflows=[_workflow()], concurrency=8, lease=10,
                                 poll_interval=0.05)
        async with engine:
            runner = asyncio.create_task(engine.run(handle_signals=False))
            hog = asyncio.create_task(busy())
            started.set()
            await asyncio.to_thread(stop.wait)
            engine.stop()
            await runner
            hog.cancel()
            await asyncio.gather(hog, return_exceptions=True)

    asyncio.run(main())


async def _cycle(engine: Engine, rng: random.Random) -> tuple[str, bool]:
    """submit(delay) and cancel at once; requeue just after the worker may have claimed
    the cancelled task (it acks a cancelled task it claims).

    Returns the task id and whether the cycle raced at all: on a loaded machine the cancel
    can arrive after the delay ran out and the worker already completed the task, which
    loses nothing but tests nothing either."""
    delay = 0.05
    task_id = await engine.submit("wf", b"x", delay=delay)
    cancelled = await engine.cancel(task_id)
    if cancelled.status is TaskStatus.COMPLETED:
        return task_id, False
    assert cancelled.status is TaskStatus.CANCELLED, cancelled.status
    await asyncio.sleep(delay + rng.uniform(0.0, 0.03))
    await engine.requeue(task_id)
    return task_id, True


@pytest.mark.parametrize("backend_url", ["sqlite", "redis"], indirect=True)
async def test_cancel_requeue_cycles_against_a_busy_worker_lose_no_task(backend_url: str) -> None:
    stop, started = threading.Event(), threading.Event()
    worker = threading.Thread(target=_run_busy_worker, args=(backend_url, stop, started), daemon=True)
    worker.start()
    rng = random.Random(20240601)
    began = time.monotonic()
    try:
        assert started.wait(10), "the worker did not start"
        async with Engine.from_url(backend_url, workflows=[_workflow()]) as engine:
            gate = asyncio.Semaphore(CONCURRENT_CYCLES)

            async def one() -> tuple[str, bool]:
                async with gate:
                    return await _cycle(engine, rng)

            cycles = await asyncio.gather(*(one() for _ in range(CYCLES)))
            ids = [task_id for task_id, _ in cycles]
            raced = sum(raced for _, raced in cycles)
            cycled = time.monotonic() - began
            deadline = time.monotonic() + 10.0
            while True:
                tasks = [await engine.get_task(i) for i in ids]
                left = [t for t in tasks if not t.status.terminal]
                if not left or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        worker.join(30)
    statuses = {s: sum(t.status is s for t in tasks) for s in TaskStatus}
    print(f"{CYCLES} cycles ({raced} cancelled in time) in {cycled:.1f}s; "
          f"final statuses {statuses}; {len(left)} left non-terminal")
    assert not worker.is_alive(), "the worker did not stop"
    assert left == [], f"{len(left)} of {CYCLES} tasks lost (non-terminal): {[t.id for t in left][:5]}"
    assert statuses[TaskStatus.COMPLETED] == CYCLES
    assert raced >= CYCLES // 2, f"only {raced} of {CYCLES} cycles cancelled in time: no race tested"
