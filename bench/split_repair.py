"""What one orphan-repair tick of a split store/queue pair costs with N pending tasks.

    .venv/bin/python bench/split_repair.py                      # 1,000 and 1,000,000 pending
    .venv/bin/python bench/split_repair.py --pending 1000 --stores memory

A worker on a `SplitBackend` (a store and a queue that are two objects) calls
`repair_orphans` once per upkeep interval. For each store (`sqlite`: a new file in a
temporary directory; `memory`) and each N: fill the store with N pending, never-started
tasks last changed an hour ago (every one a candidate, the worst case: each tick enqueues
a whole page), compose it with a `memory://` queue through `compose()`, and time `--ticks`
consecutive ticks: wall time and CPU time (`time.process_time`, every thread of the process,
so SQLite's database thread counts). A tick reads one page (`SplitBackend.page_size`) and
enqueues the never-started tasks on it; a full pass over the store takes N / page_size ticks.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from _shared import insert_in_batches

from salvador_core.backends.memory import MemoryBackend
from salvador_core.backends.sqlite import SQLiteBackend
from salvador_core.split import SplitBackend, compose
from salvador_core.task import Task, encode_task, new_task_id, utcnow

WORKFLOW = "repair-bench"
LEASE = 30.0  # the engine's default lease: what a worker passes as `older_than`


def pending_tasks(count: int) -> Iterator[Task]:
    """`count` pending, never-started tasks, last changed an hour ago."""
    then = utcnow() - timedelta(hours=1)
    for _ in range(count):
        yield Task(id=new_task_id(), workflow=WORKFLOW, body=b'{"order": 1}', version=1,
                   created_at=then, updated_at=then)


async def fill_sqlite(path: Path, count: int) -> SQLiteBackend:
    """Rows written straight into the backend's table (as bench/overview.py does), store
    only (no queue columns): what `create` writes, 10,000 rows per `executemany`."""
    async with SQLiteBackend(path):
        pass  # creates the schema and its indexes

    def write() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        insert = (
            "INSERT INTO tasks (id, workflow, record, status, version, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
        )
        insert_in_batches(conn, insert, (
            (task.id, task.workflow, encode_task(task), task.status.value, task.version,
             task.updated_at.timestamp())
            for task in pending_tasks(count)
        ))
        conn.execute("COMMIT")
        conn.close()

    await asyncio.to_thread(write)
    store = SQLiteBackend(path)
    await store.open()
    return store


async def fill_memory(count: int) -> MemoryBackend:
    """Through `create`, one task at a time."""
    store = MemoryBackend()
    await store.open()
    for task in pending_tasks(count):
        await store.create(task)
    return store


async def measure(store: Any, ticks: int) -> tuple[list[float], list[float], int]:
    """Wall and CPU milliseconds of `ticks` consecutive repair ticks, and the tasks enqueued."""
    queue = MemoryBackend()
    await queue.open()
    split = compose(store, queue)
    assert isinstance(split, SplitBackend), "compose() did not make a split pair"
    walls: list[float] = []
    cpus: list[float] = []
    enqueued = 0
    for _ in range(ticks):
        wall, cpu = time.perf_counter(), time.process_time()
        enqueued += await split.repair_orphans(workflows=[WORKFLOW], older_than=LEASE)
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    await queue.close()
    return walls, cpus, enqueued


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", default="1000,1000000", help="comma-separated task counts")
    parser.add_argument("--stores", default="sqlite,memory", help="comma-separated: sqlite, memory")
    parser.add_argument("--ticks", type=int, default=20, help="consecutive ticks timed per run")
    args = parser.parse_args()
    sizes = [int(n) for n in args.pending.split(",")]
    print(f"page size {SplitBackend.page_size}; {args.ticks} consecutive ticks per run; "
          "every pending task a candidate (worst case)\n")
    print("| store | pending | tick wall ms (median / max) | tick CPU ms (median / max) "
          "| enqueued per tick | ticks per full pass |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="salvador-repair-") as scratch:
        for name in args.stores.split(","):
            for count in sizes:
                print(f"filling {name} with {count:,} pending tasks ...", file=sys.stderr)
                if name == "sqlite":
                    store: Any = await fill_sqlite(Path(scratch) / f"{count}.db", count)
                else:
                    store = await fill_memory(count)
                walls, cpus, enqueued = await measure(store, args.ticks)
                await store.close()
                passes = -(-count // SplitBackend.page_size)
                wall = f"{statistics.median(walls):.2f} / {max(walls):.2f}"
                cpu = f"{statistics.median(cpus):.2f} / {max(cpus):.2f}"
                print(f"| {name} + memory queue | {count:,} | {wall} | {cpu} | {enqueued / args.ticks:.0f} "
                      f"| {passes:,} |", flush=True)
                del store
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
