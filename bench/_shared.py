"""What the bench scripts share: the PostgreSQL server they use and its clean-up, the
SQLite bulk insert they fill stores with, and a no-op workflow that says when it is done.
Imported by the scripts in this folder, which run from it (it is first on their `sys.path`)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from salvador_core import StepContext, Workflow

#: The PostgreSQL server the benches use; each run gets a schema of its own, dropped after.
POSTGRES_URL = os.environ.get("SALVADOR_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def drop_schema(schema: str) -> None:
    """Drop a bench run's PostgreSQL schema and everything in it."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def insert_in_batches(conn: sqlite3.Connection, insert: str, rows: Iterable[tuple[Any, ...]]) -> None:
    """`insert` once per row, 10,000 rows per `executemany` (SQLite has no faster path; the
    caller holds the transaction)."""
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == 10_000:
            conn.executemany(insert, batch)
            batch.clear()
    conn.executemany(insert, batch)


def noop_workflow(name: str, steps: int, tasks: int) -> tuple[Workflow, asyncio.Event]:
    """A workflow of `steps` no-op async steps, and an event set once its last step has run
    `tasks` times (in this process)."""
    done = asyncio.Event()
    finished = 0

    async def noop(ctx: StepContext) -> None:
        return None

    async def last(ctx: StepContext) -> None:
        nonlocal finished
        finished += 1
        if finished == tasks:
            done.set()

    wf = Workflow(name)
    for i in range(steps - 1):
        wf.step(f"s{i + 1}", noop)
    wf.step(f"s{steps}", last)
    return wf, done


def local_server_pid(port: int) -> int | None:
    """The pid of the process listening on TCP `port` on this machine (Linux `/proc`), or
    None: not Linux, no such listener, or its process not visible to this user."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) in wanted:
                    return int(entry.name)
        except OSError:
            continue
    return None


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds `pid` has used so far (`/proc/<pid>/stat`)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
