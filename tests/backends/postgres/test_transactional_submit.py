"""Transactional submit (the outbox pattern): `Engine.submit(..., connection=conn)` stores the
task in the caller's open transaction, on an asyncpg connection, a SQLAlchemy
`AsyncConnection` or an `AsyncSession`. Rolled back: the task never exists and never runs.
Committed: it runs, and the NOTIFY sent inside the transaction wakes an idle worker when the
commit lands."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from salvador_core import Engine, StepContext, TaskStatus, Workflow

pytestmark = pytest.mark.asyncio

#: Wake-up latencies measured here (commit returned -> first step started), for the report.
LATENCIES_MS: dict[str, list[float]] = {}


class Recorder:
    """A workflow whose step notes, per task, when it started (monotonic clock)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.workflow = Workflow("outbox")
        self.workflow.step("ship", self._ship)

    async def _ship(self, ctx: StepContext) -> str:
        self.started.setdefault(ctx.task.id, time.monotonic())
        return "shipped"

    async def started_at(self, task_id: str, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while task_id not in self.started:
            assert time.monotonic() < deadline, f"task {task_id} never ran"
            await asyncio.sleep(0.0005)
        return self.started[task_id]


@pytest_asyncio.fixture
async def running(pg_url: str) -> AsyncIterator[tuple[Engine, Recorder]]:
    """An engine with an idle worker waiting on LISTEN (poll_interval far above any bound)."""
    recorder = Recorder()
    engine = Engine.from_url(pg_url, workflows=[recorder.workflow], poll_interval=30.0)
    async with engine:
        worker = asyncio.create_task(engine.run(handle_signals=False))
        await asyncio.sleep(0.3)  # the claim loop is waiting now
        yield engine, recorder
        engine.stop()
        await asyncio.wait_for(worker, 10)


def sqlalchemy_url(pg_url: str) -> str:
    base, _, _ = pg_url.partition("?")
    return base.replace("postgresql://", "postgresql+asyncpg://", 1)


Submitter = Callable[[Engine, str, dict[str, Any], bool], Awaitable[tuple[str, float]]]


async def via_asyncpg(engine: Engine, pg_url: str, body: dict[str, Any], commit: bool) -> tuple[str, float]:
    conn = await asyncpg.connect(pg_url.partition("?")[0])
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS orders (id text)")
        await conn.execute("INSERT INTO orders VALUES ($1)", body["order"])
        task_id = await engine.submit("outbox", body, connection=conn)
        await (tx.commit() if commit else tx.rollback())
        return task_id, time.monotonic()
    finally:
        await conn.close()


async def via_async_connection(
    engine: Engine, pg_url: str, body: dict[str, Any], commit: bool
) -> tuple[str, float]:
    from sqlalchemy.ext.asyncio import create_async_engine

    sa = create_async_engine(sqlalchemy_url(pg_url))
    try:
        async with sa.connect() as conn:
            await conn.begin()
            task_id = await engine.submit("outbox", body, connection=conn)
            await (conn.commit() if commit else conn.rollback())
            return task_id, time.monotonic()
    finally:
        await sa.dispose()


async def via_async_session(
    engine: Engine, pg_url: str, body: dict[str, Any], commit: bool
) -> tuple[str, float]:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    sa = create_async_engine(sqlalchemy_url(pg_url))
    try:
        async with AsyncSession(sa) as session:
            task_id = await engine.submit("outbox", body, connection=session)
            await (session.commit() if commit else session.rollback())
            return task_id, time.monotonic()
    finally:
        await sa.dispose()


KINDS = {"asyncpg": via_asyncpg, "AsyncConnection": via_async_connection, "AsyncSession": via_async_session}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_rolled_back_submit_never_exists_and_never_runs(
    running: tuple[Engine, Recorder], pg_url: str, kind: str
) -> None:
    engine, recorder = running
    task_id, _ = await KINDS[kind](engine, pg_url, {"order": "R-1"}, False)
    await asyncio.sleep(0.5)  # long enough for a woken worker to have claimed it
    assert await engine.get_task(task_id) is None
    assert task_id not in recorder.started
    assert (await engine.list_tasks()).tasks == []


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_committed_submit_runs_and_wakes_the_worker_at_the_commit(
    running: tuple[Engine, Recorder], pg_url: str, kind: str
) -> None:
    engine, recorder = running
    samples = []
    for i in range(5):
        task_id, committed_at = await KINDS[kind](engine, pg_url, {"order": f"C-{i}"}, True)
        samples.append((await recorder.started_at(task_id) - committed_at) * 1000)
        await asyncio.sleep(0.1)  # the worker is idle again before the next one
    LATENCIES_MS[kind] = samples
    print(f"\n{kind}: commit -> first step started, ms: {', '.join(f'{s:.2f}' for s in samples)}")
    # Loose bound: the target (about 5 ms) is reported, not asserted; a poll would take 30 s.
    assert min(samples) < 250, samples
    task = await engine.get_task(task_id)
    assert task is not None
    for _ in range(100):
        task = await engine.get_task(task_id)
        assert task is not None
        if task.status is TaskStatus.COMPLETED:
            break
        await asyncio.sleep(0.02)
    assert task.status is TaskStatus.COMPLETED


async def test_uncommitted_task_is_invisible_until_the_commit(
    running: tuple[Engine, Recorder], pg_url: str
) -> None:
    engine, recorder = running
    conn = await asyncpg.connect(pg_url.partition("?")[0])
    try:
        async with conn.transaction():
            task_id = await engine.submit("outbox", {"order": "U-1"}, connection=conn)
            await asyncio.sleep(0.3)
            assert await engine.get_task(task_id) is None, "visible before the commit"
            assert task_id not in recorder.started
        await recorder.started_at(task_id)
    finally:
        await conn.close()


async def test_idempotent_submit_inside_the_callers_transaction(
    running: tuple[Engine, Recorder], pg_url: str
) -> None:
    engine, recorder = running
    earlier = await engine.submit("outbox", {"order": "I-0"}, idempotency_key="order-I-0")
    conn = await asyncpg.connect(pg_url.partition("?")[0])
    try:
        async with conn.transaction():
            first = await engine.submit(
                "outbox", {"order": "I-1"}, idempotency_key="order-I-1", connection=conn
            )
            again = await engine.submit(
                "outbox", {"order": "I-1"}, idempotency_key="order-I-1", connection=conn
            )
            old = await engine.submit(
                "outbox", {"order": "I-0"}, idempotency_key="order-I-0", connection=conn
            )
            # The transaction is still usable after the duplicates.
            assert await conn.fetchval("SELECT 41 + 1") == 42
        assert first == again
        assert old == earlier
    finally:
        await conn.close()
    await recorder.started_at(first)
    assert len((await engine.list_tasks()).tasks) == 2


async def test_a_connection_of_another_kind_is_refused(running: tuple[Engine, Recorder]) -> None:
    engine, _ = running
    with pytest.raises(TypeError, match="asyncpg connection"):
        await engine.submit("outbox", {}, connection=object())
