"""The test side of fault injection: start worker processes (tests/helpers/worker_app.py), kill or
pause them, and count what their steps really did from the side-effect log they share."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from salvador_core import TaskStatus

APP = Path(__file__).parent / "worker_app.py"


class Workers:
    """Worker processes on one backend URL that never outlive the test (`stop_all`)."""

    def __init__(self, url: str, directory: Path) -> None:
        self.url = url
        self.directory = directory
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.directory / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(APP), self.url, str(self.directory), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.directory / f"worker-{self.procs.index(proc)}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=10)


def effect_lines(workdir: Path) -> list[list[str]]:
    """The side-effect log as `[event, task id, pid]` rows, complete lines only: workers may
    be appending while it is read, and a read can end inside a line being written."""
    text = (workdir / "effects.log").read_text()
    return [line.split() for line in text[: text.rfind("\n") + 1].splitlines()]


def effects(workdir: Path) -> Counter[tuple[str, str]]:
    """How often each (event, task id) happened, from the steps' own side-effect log."""
    return Counter((row[0], row[1]) for row in effect_lines(workdir))


def all_ran(workdir: Path, event: str, task_ids: Iterable[str]) -> bool:
    """Whether `event` happened for every one of `task_ids` (the log read once: a
    `wait_for` condition that reads it once per task is quadratic, minutes for 3,000)."""
    ran = {row[1] for row in effect_lines(workdir) if row[0] == event}
    return all(task_id in ran for task_id in task_ids)


def count_of(workdir: Path, event: str) -> int:
    return sum(1 for row in effect_lines(workdir) if row[0] == event)


async def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll `condition` (sync or async) every 20 ms; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def submit_many(engine: Any, n: int, *, batch: int = 200, tag: str = "n") -> list[str]:
    """Submit `n` tasks of the `counted` workflow ({tag: i} bodies), `batch` at a time."""
    ids: list[str] = []
    for start in range(0, n, batch):
        chunk = range(start, min(n, start + batch))
        ids += await asyncio.gather(*(engine.submit("counted", {tag: i}) for i in chunk))
    return ids


async def all_completed(engine: Any) -> bool:
    """Whether every stored task is completed. A last step's effect is written before its
    task's final write, which a fault may delay by a lease (the step then runs again):
    wait for this, not for the effects alone, before checking the records."""
    return all(t.status is TaskStatus.COMPLETED for t in await all_tasks(engine))


async def all_tasks(engine: Any, workflow: str | None = None) -> list[Any]:
    """Every stored task (of `workflow`), page by page."""
    tasks: list[Any] = []
    cursor = None
    while True:
        page = await engine.list_tasks(workflow=workflow, limit=500, cursor=cursor)
        tasks += page.tasks
        if page.cursor is None:
            return tasks
        cursor = page.cursor
