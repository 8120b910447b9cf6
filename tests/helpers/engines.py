"""Waiting on an engine in tests that run one without the conformance suite's base class."""

from __future__ import annotations

import asyncio

from salvador_core import Engine, Task


async def settled(engine: Engine, task_id: str, within: float = 5.0) -> Task:
    """The task once it is terminal, read every 10 ms; AssertionError with its last state
    after `within` seconds."""
    for _ in range(int(within / 0.01)):
        task = await engine.get_task(task_id)
        if task is not None and task.status.terminal:
            return task
        await asyncio.sleep(0.01)
    last = await engine.get_task(task_id)
    raise AssertionError(f"task {task_id} did not finish within {within:g} s: {last}")
