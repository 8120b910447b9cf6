"""A worker process for fault-injection tests: `python tests/worker_app.py URL DIR [options]`.

Every step run leaves a side effect (a line appended to DIR/effects.log: "<event> <task>
<pid>"), so tests count what really ran instead of trusting the engine's own records.
Steps block at chosen points on their first attempt, giving tests a moment to SIGKILL
or SIGSTOP the process in the middle of a step.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from salvador_core import NO_RETRY, Engine, RetryPolicy, StepContext, Workflow


def effect(directory: Path, event: str, task_id: str) -> None:
    """Append one line; O_APPEND writes this small are atomic across processes."""
    with open(directory / "effects.log", "a") as f:
        f.write(f"{event} {task_id} {os.getpid()}\n")


def marker(directory: Path, name: str) -> None:
    (directory / name).write_text(str(os.getpid()))


def build(directory: Path, block: str) -> list[Workflow]:
    """`block` says where the first attempt stops: 'none', 'step2-hang' (sleep for ever,
    to be killed), 'step2-brief' (sleep 0.3 s, to be paused) or 'compensate2-hang'."""

    counted = Workflow("counted", retry=RetryPolicy(max_attempts=5, initial_delay=0.05))

    @counted.step()
    def one(ctx: StepContext) -> int:
        effect(directory, "one", ctx.task.id)
        return 1

    @counted.step()
    async def two(ctx: StepContext) -> dict[str, int]:
        if ctx.attempt == 1 and block in ("step2-hang", "step2-brief"):
            marker(directory, f"in-two-{ctx.task.id}")
            await asyncio.sleep(3600 if block == "step2-hang" else 0.3)
        effect(directory, "two", ctx.task.id)
        return {"pid": os.getpid(), "one": ctx.results["one"]}

    @counted.step()
    def three(ctx: StepContext) -> str:
        effect(directory, "three", ctx.task.id)
        return "done"

    saga = Workflow("saga", retry=NO_RETRY)

    def undo(name: str, hang: bool) -> object:
        def compensate(ctx: StepContext) -> None:
            effect(directory, f"undo-{name}-start", ctx.task.id)
            if hang and not (directory / f"undo-{name}-hung").exists():
                marker(directory, f"undo-{name}-hung")
                time.sleep(3600)
            effect(directory, f"undo-{name}-done", ctx.task.id)

        compensate.__name__ = f"undo_{name}"
        return compensate

    def step(name: str, fail: bool = False) -> object:
        def run(ctx: StepContext) -> str:
            effect(directory, name, ctx.task.id)
            if fail:
                raise RuntimeError(f"{name} failed on purpose")
            return name

        run.__name__ = name
        return run

    hang2 = block == "compensate2-hang"
    saga.step("s1", step("s1"), compensate=undo("s1", False))  # type: ignore[arg-type]
    saga.step("s2", step("s2"), compensate=undo("s2", hang2))  # type: ignore[arg-type]
    saga.step("s3", step("s3", fail=True), compensate=undo("s3", False))  # type: ignore[arg-type]
    saga.step("s4", step("s4"), compensate=undo("s4", False))  # type: ignore[arg-type]
    return [counted, saga]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--block", default="none")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    engine = Engine.from_url(
        args.url,
        workflows=build(args.directory, args.block),
        lease=args.lease,
        poll_interval=0.05,
        concurrency=args.concurrency,
        drain_timeout=2.0,
    )
    await engine.run()


if __name__ == "__main__":
    asyncio.run(main())
