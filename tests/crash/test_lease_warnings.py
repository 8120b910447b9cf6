"""No "lease lost" for a task that ran every step once: workers with different leases on one
backend, SQLite and Redis.

The report (issue 12, item 10): workers sharing a backend with different `lease` settings
logged "lease lost; stopping its step" for tasks that ran each step exactly once. The
worker with the short lease beats every lease/3; a beat sent as the last step returns can
reach the backend after the run's final write acked the task, and its extend is refused.
That refusal ends nothing: the task is settled. Steps here take about one beat interval
of the short-lease worker, which makes that moment common: without the fix (the heartbeat
quiet once the final write is under way), 1-24 of the 80 tasks on SQLite and 3-8 on Redis
logged it, in each of six runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from salvador_core import Engine, StepContext, TaskStatus, Workflow
from tests.helpers.redis_servers import sqlite_or_redis_url

SHORT_LEASE = 0.3
LONG_LEASE = 3.0
TASKS = 80


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with sqlite_or_redis_url(request.param, tmp_path, "tasks") as url:
        yield url


def three_steps(ran: Counter[tuple[str, str]], worker: str = "") -> Workflow:
    """Three async steps of about one short-lease beat interval each, counted per task and
    per worker."""
    wf = Workflow("beats")

    def step(name: str) -> Callable[[StepContext], Awaitable[str]]:
        async def fn(ctx: StepContext) -> str:
            ran[(ctx.task.id, name)] += 1
            ran[(worker, "")] += 1
            await asyncio.sleep(SHORT_LEASE / 3)
            return name

        fn.__name__ = name
        return fn

    for name in ("one", "two", "three"):
        wf.step(name, step(name))
    return wf


@pytest.mark.asyncio
async def test_workers_with_different_leases_log_no_lease_lost_for_tasks_that_ran_every_step_once(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    ran: Counter[tuple[str, str]] = Counter()
    workers = [
        Engine.from_url(url, workflows=[three_steps(ran, f"lease {lease}")], lease=lease,
                        poll_interval=0.05, concurrency=8, durability="off")
        for lease in (SHORT_LEASE, LONG_LEASE)
    ]
    with caplog.at_level(logging.INFO, logger="salvador"):
        async with Engine.from_url(url, workflows=[three_steps(ran)], durability="off") as producer:
            runs = [asyncio.create_task(w.run(handle_signals=False)) for w in workers]
            try:
                ids = [await producer.submit("beats", {"n": i}) for i in range(TASKS)]
                for _ in range(3000):
                    tasks = [await producer.get_task(i) for i in ids]
                    if all(t is not None and t.status.terminal for t in tasks):
                        break
                    await asyncio.sleep(0.02)
            finally:
                for w in workers:
                    w.stop()
                await asyncio.wait_for(asyncio.gather(*runs), 30)

    assert all(t is not None and t.status is TaskStatus.COMPLETED for t in tasks), Counter(
        t.status.value if t is not None else None for t in tasks
    )
    per_worker = {key[0]: n for key, n in ran.items() if key[1] == ""}
    steps = {key: n for key, n in ran.items() if key[1] != ""}
    twice = sorted(key for key, n in steps.items() if n != 1)
    assert len(steps) == 3 * TASKS, f"{len(steps)} of {3 * TASKS} steps ran"
    assert not twice, f"steps not run exactly once: {twice[:5]}"
    # Both workers ran steps, or the mix of leases was not tested.
    assert len(per_worker) == 2, per_worker
    noise = [
        f"{r.levelname}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and "lease" in r.getMessage()
    ]
    assert noise == [], f"{len(noise)} lease warning(s) for tasks that ran every step once: {noise[:3]}"
