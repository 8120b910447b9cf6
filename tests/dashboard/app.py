"""Workflows the dashboard tests show, importable as `tests.dashboard.app:workflows` (the
dashboard's `--app`); `seed`, which puts tasks of every kind into a backend; and
`complete`, which runs more tasks to completion."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from salvador_core import NO_RETRY, Engine, StepContext, Task, TaskStatus, Workflow

#: A name and a step result holding markup: the pages must show them as text.
HOSTILE = "<script>window.__pwned = 1</script><b>wf</b>"
HOSTILE_RESULT = "<img src=x onerror=\"window.__pwned = 2\">"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"

ok = Workflow("dash-ok")


@ok.step("first")
def first(ctx: StepContext) -> dict[str, int]:
    return {"n": ctx.json()["n"]}


@ok.step("second")
async def second(ctx: StepContext) -> dict[str, int]:
    return {"doubled": ctx.results["first"]["n"] * 2}


fail = Workflow("dash-fail", retry=NO_RETRY)


@fail.step("prepare")
def prepare(ctx: StepContext) -> dict[str, str]:
    return {"note": HOSTILE_RESULT}


@fail.step("explode")
def explode(ctx: StepContext) -> None:
    raise ValueError("the explode step always fails <i>here</i>")


hostile = Workflow(HOSTILE)


@hostile.step("only")
def only(ctx: StepContext) -> str:
    return HOSTILE_RESULT


workflows = [ok, fail, hostile]


@dataclass(frozen=True)
class Seeded:
    """The ids `seed` created, by what happened to them."""

    completed: str
    failed: str
    hostile: str
    pending: str


async def seed(url: str) -> Seeded:
    """Run one task of each workflow to its end with an in-process worker (one completed,
    one dead-lettered, one with a hostile name), then submit one that stays pending."""
    engine = Engine.from_url(url, workflows=workflows, observers=[], poll_interval=0.05,
                             durability="off")
    async with engine:
        completed = await engine.submit("dash-ok", {"n": 21}, meta={
            "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01", "origin": "<b>test</b>"})
        failed = await engine.submit("dash-fail", {"order": "<script>body</script>"})
        odd = await engine.submit(HOSTILE, {})
        tasks = await run_until_finished(engine, [completed, failed, odd])
        assert [t.status for t in tasks] == [TaskStatus.COMPLETED, TaskStatus.FAILED,
                                             TaskStatus.COMPLETED], tasks
        pending = await engine.submit("dash-ok", {"n": 1}, delay=3600)
    return Seeded(completed, failed, odd, pending)


async def complete(url: str, count: int) -> list[str]:
    """Submit `count` tasks of dash-ok and run them to completion with an in-process worker
    that runs dash-ok alone (tasks of other workflows stay queued)."""
    engine = Engine.from_url(url, workflows=[ok], observers=[], poll_interval=0.05, durability="off")
    async with engine:
        ids = [await engine.submit("dash-ok", {"n": n}) for n in range(count)]
        tasks = await run_until_finished(engine, ids)
        assert all(t.status is TaskStatus.COMPLETED for t in tasks), tasks
    return ids


async def run_until_finished(engine: Engine, ids: list[str]) -> list[Task]:
    """Run `engine`'s worker until every task of `ids` is finished (10 s at most)."""
    worker = asyncio.create_task(engine.run())
    try:
        for _ in range(200):
            found = [await engine.get_task(i) for i in ids]
            tasks = [t for t in found if t is not None and t.status.terminal]
            if len(tasks) == len(ids):
                return tasks
            await asyncio.sleep(0.05)
        raise AssertionError(f"tasks did not finish: {found}")
    finally:
        engine.stop()
        await worker
