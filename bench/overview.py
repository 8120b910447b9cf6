"""The dashboard's overview with a million tasks stored: how long it takes, per backend.

    .venv/bin/python bench/overview.py --backends sqlite,redis,postgres --tasks 1000000

For each backend: fill a fresh store (a new SQLite file, a new Redis key prefix, a new
PostgreSQL schema) with `--tasks` tasks in a realistic mix, then time the overview page of
`salvador_core.dashboard.create_app` (requested through httpx's ASGI transport: the whole
app, routing, counting and the Jinja2 render, without a socket) and `TaskCounts.stats()`
alone: the median (and the slowest) of `--requests` requests after one warm-up. The store
is removed afterwards. bench/README.md says how the store is filled and why that way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from _shared import POSTGRES_URL, drop_schema, insert_in_batches

from salvador_core.dashboard import create_app
from salvador_core.engine import Engine
from salvador_core.protocols import Backend, TaskCounts
from salvador_core.task import (
    COMPLETION_MINUTES,
    DeadLetter,
    Task,
    TaskError,
    TaskStatus,
    encode_task,
    utcnow,
)

ALL_BACKENDS = ("sqlite", "redis", "postgres")
REDIS_URL = os.environ.get("SALVADOR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: The budget the overview has to stay within (issue 17).
BUDGET_MS = 200.0

#: Workflows and their shares of the tasks: a few busy ones, a long tail of quiet ones.
WORKFLOWS = (
    ("process-order", 0.40), ("send-email", 0.25), ("sync-inventory", 0.12), ("charge-card", 0.08),
    ("generate-invoice", 0.06), ("refund", 0.04), ("nightly-report", 0.03), ("deliver-webhook", 0.02),
)
#: Where the tasks are: mostly finished, a backlog waiting, some retries delayed, the dead
#: letters of a week. Running tasks are made afterwards by real claims (`RUNNING`).
MIX = (
    ("completed", 0.930), ("failed", 0.020), ("compensated", 0.005), ("cancelled", 0.010),
    ("pending", 0.030), ("delayed", 0.005),
)
#: Tasks claimed and marked running through the backend after the fill (a worker's slots).
RUNNING = 100


# -- the tasks --------------------------------------------------------------------------


@dataclass
class Filled:
    """What the fill wrote, to hold the counted figures against."""

    by_status: Counter[str] = field(default_factory=Counter)
    completions_last_hour: Counter[tuple[str, int]] = field(default_factory=Counter)
    seconds: float = 0.0
    how: str = ""


def make_tasks(count: int, days: float, seed: int) -> Iterator[tuple[Task, bool]]:
    """`count` tasks in the mix above, as `(task, queued)`: finished ones with finish times
    spread evenly over the last `days` days (so the last hour holds about count / (24 *
    days) completions), a backlog created in the last 10 minutes, retries due within the
    next hour. Deterministic for a seed."""
    rng = random.Random(seed)
    workflows = rng.choices([name for name, _ in WORKFLOWS], [share for _, share in WORKFLOWS], k=count)
    kinds = rng.choices([kind for kind, _ in MIX], [share for _, share in MIX], k=count)
    now = utcnow()
    span = days * 86400.0
    for n, (workflow, kind) in enumerate(zip(workflows, kinds, strict=True)):
        body = json.dumps({"order": n, "customer": f"c-{rng.randrange(100_000)}", "amount": 1999}).encode()
        if kind in ("pending", "delayed"):
            created = now - timedelta(seconds=rng.uniform(0, 600))
            due = now + timedelta(seconds=rng.uniform(60, 3600)) if kind == "delayed" else None
            yield _task(rng, workflow, body, created, created, TaskStatus.PENDING, not_before=due), True
            continue
        finished = now - timedelta(seconds=rng.uniform(0, span))
        created = finished - timedelta(seconds=rng.uniform(0.01, 5.0))
        status = TaskStatus(kind)
        yield _task(rng, workflow, body, created, finished, status), False


def _task(rng: random.Random, workflow: str, body: bytes, created: datetime, updated: datetime,
          status: TaskStatus, *, not_before: datetime | None = None) -> Task:
    task_id = f"{int(created.timestamp() * 1000):012x}{rng.getrandbits(80):020x}"
    fields: dict[str, Any] = {}
    if status is TaskStatus.COMPLETED:
        results = {"reserve": {"ok": True}, "charge": "ch_1", "ship": None}
        fields = {"step": 3, "attempt": 1, "results": results}
    elif status in (TaskStatus.FAILED, TaskStatus.COMPENSATED):
        error = TaskError("PaymentDeclined", "the card was declined", "charge", 3, "Traceback ...", updated)
        fields = {"step": 1, "attempt": 3, "error": error, "failures": (error,),
                  "dead_letter": DeadLetter.STEP_FAILED}
    elif status is TaskStatus.CANCELLED:
        fields = {"cancel_requested": True}
    elif not_before is not None:
        fields = {"step": 1, "attempt": 1, "not_before": not_before}
    return Task(id=task_id, workflow=workflow, body=body, status=status, created_at=created,
                updated_at=updated, version=4 if status.terminal else 1, **fields)


def _tally(filled: Filled, task: Task, hour_ago: float) -> None:
    filled.by_status[task.status.value] += 1
    finished = task.updated_at.timestamp()
    if task.status is TaskStatus.COMPLETED and finished >= hour_ago:
        filled.completions_last_hour[(task.workflow, int(finished // 60))] += 1


# -- filling each backend ----------------------------------------------------------------


async def fill_sqlite(path: Path, tasks: Iterator[tuple[Task, bool]], filled: Filled) -> None:
    """Rows written straight into the backend's table (the layout of sqlite.py), 10,000 per
    `executemany`, one transaction: SQLite has no faster path, and nothing but the rows'
    content differs from what `submit` and `settle` write."""
    from salvador_core.backends.sqlite import SQLiteBackend

    async with SQLiteBackend(path):
        pass  # creates the schema and its indexes
    hour_ago = time.time() - 3600

    def write() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        insert = (
            "INSERT INTO tasks (id, workflow, record, status, version, updated_at, q_workflow, q_due) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        def rows() -> Iterator[tuple[Any, ...]]:
            for task, queued in tasks:
                _tally(filled, task, hour_ago)
                due = (task.not_before or task.created_at).timestamp() if queued else None
                yield (task.id, task.workflow, encode_task(task), task.status.value, task.version,
                       task.updated_at.timestamp(), task.workflow if queued else None, due)

        insert_in_batches(conn, insert, rows())
        conn.execute("COMMIT")
        conn.close()

    await asyncio.to_thread(write)
    filled.how = "executemany into the table, one transaction"


async def fill_redis(backend: Any, tasks: Iterator[tuple[Task, bool]], filled: Filled) -> None:
    """Through the backend itself: `submit` (waiting tasks) and `create` (finished ones), 2,000
    calls in flight, which its multiplexed connection sends as pipelines. A task created as
    finished is no completion to the scripts, so the last hour's completion counters are then
    set to what `settle` would have counted."""
    hour_ago = time.time() - 3600
    batch: list[Any] = []
    for task, queued in tasks:
        _tally(filled, task, hour_ago)
        batch.append(backend.submit(task) if queued else backend.create(task))
        if len(batch) == 2000:
            await asyncio.gather(*batch)
            batch.clear()
    await asyncio.gather(*batch)
    ttl_ms = 2 * 3600 * 1000
    for (workflow, minute), count in filled.completions_last_hour.items():
        key = backend._base(workflow) + f"c:{minute}"
        await backend._exec("SET", key, count, "PX", ttl_ms)
    filled.how = "submit/create through the backend, 2,000 in flight (pipelined)"


async def fill_postgres(backend: Any, tasks: Iterator[tuple[Task, bool]], filled: Filled) -> None:
    """`COPY` into the backend's table (asyncpg `copy_records_to_table`, 50,000 rows each),
    then `VACUUM ANALYZE` as autovacuum does after a bulk insert."""
    hour_ago = time.time() - 3600
    columns = ("id", "workflow", "record", "status", "version", "updated_at", "q_workflow", "q_due")
    pool = backend._db().pool
    batch: list[tuple[Any, ...]] = []

    async def flush() -> None:
        async with pool.acquire() as conn:
            await conn.copy_records_to_table("tasks", schema_name=backend.schema, columns=columns,
                                             records=batch)
        batch.clear()

    for task, queued in tasks:
        _tally(filled, task, hour_ago)
        due = (task.not_before or task.created_at) if queued else None
        batch.append((task.id, task.workflow, encode_task(task), task.status.value, task.version,
                      task.updated_at, task.workflow if queued else None, due))
        if len(batch) == 50_000:
            await flush()
    await flush()
    async with pool.acquire() as conn:
        await conn.execute(f'VACUUM ANALYZE "{backend.schema}".tasks')
    filled.how = "COPY into the table, then VACUUM ANALYZE"


async def make_running(backend: Backend, filled: Filled) -> None:
    """`RUNNING` tasks claimed from the backlog and marked running, as workers do."""
    names = [name for name, _ in WORKFLOWS]
    for n in range(RUNNING):
        claim = await backend.claim(names[n % len(names)], lease=3600.0, wait=0)
        if claim is None:
            continue
        task = await backend.get(claim.task_id)
        assert task is not None
        await backend.update(task.evolve(status=TaskStatus.RUNNING, owner="bench", attempt=1), task.version)
        filled.by_status["pending"] -= 1
        filled.by_status["running"] += 1


# -- one backend ---------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    tasks: int = 0
    fill_s: float = 0.0
    how: str = ""
    page_ms: float = 0.0
    page_max_ms: float = 0.0
    stats_ms: float = 0.0
    stats_max_ms: float = 0.0
    checked: str = ""
    skipped: str | None = None


@contextlib.asynccontextmanager
async def fresh_store(name: str, scratch: Path) -> AsyncIterator[str]:
    """A URL of a new, empty store of backend `name`, removed afterwards."""
    tag = f"overview_{os.getpid()}_{secrets.token_hex(3)}"
    if name == "sqlite":
        yield f"sqlite:///{scratch / (tag + '.db')}"
        return
    if name == "redis":
        prefix = tag + ":"
        try:
            yield f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix={prefix}"
        finally:
            await _delete_redis_prefix(prefix)
        return
    try:
        yield f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={tag}"
    finally:
        await drop_schema(tag)


async def _delete_redis_prefix(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


async def measure(name: str, url: str, count: int, days: float, requests: int, seed: int) -> Result:
    result = Result(name, count)
    filled = Filled()
    tasks = make_tasks(count, days, seed)
    began = time.perf_counter()
    if name == "sqlite":
        await fill_sqlite(Path(url.removeprefix("sqlite:///")), tasks, filled)
    async with Engine.from_url(url) as engine:
        backend = engine.backend
        if name == "redis":
            await fill_redis(backend, tasks, filled)
        elif name == "postgres":
            await fill_postgres(backend, tasks, filled)
        assert isinstance(backend, Backend)
        assert isinstance(backend, TaskCounts)
        await make_running(backend, filled)
        result.fill_s, result.how = time.perf_counter() - began, filled.how
        print(f"{name}: {count:,} tasks stored in {result.fill_s:.0f} s ({filled.how})", file=sys.stderr)
        result.stats_ms, result.stats_max_ms = await timed(backend.stats, requests)
        before = int(time.time() // 60)
        result.checked = check(await backend.stats(), filled, count, {before, int(time.time() // 60)})
    app = create_app(url, read_only=True)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def page() -> None:
                response = await client.get("/")
                response.raise_for_status()

            result.page_ms, result.page_max_ms = await timed(page, requests)
    finally:
        await app.state.dashboard.close()
    return result


async def timed(call: Callable[[], Any], requests: int) -> tuple[float, float]:
    """Median and slowest of `requests` calls after one warm-up, in ms."""
    await call()
    spent = []
    for _ in range(requests):
        began = time.perf_counter()
        await call()
        spent.append((time.perf_counter() - began) * 1000)
    return statistics.median(spent), max(spent)


def check(found: list[Any], filled: Filled, count: int, minutes: set[int]) -> str:
    """The counted figures against what the fill wrote: every task by status, and the last
    hour's completions as of one of `minutes` (the minute may turn while stats() runs)."""
    by_status: Counter[str] = Counter()
    for stats in found:
        by_status.update(stats.counts)
    if +by_status != +filled.by_status:
        return f"COUNTS DIFFER: counted {dict(by_status)}, stored {dict(filled.by_status)}"
    counted = sum(sum(s.completions) for s in found)
    expected = {
        sum(n for (_, minute), n in filled.completions_last_hour.items() if minute > now - COMPLETION_MINUTES)
        for now in minutes
    }
    if counted not in expected:
        return f"COMPLETIONS DIFFER: counted {counted} in the last hour, stored {sorted(expected)}"
    return f"all {count:,} counted; {counted:,} completions in the last hour"


# -- the report ------------------------------------------------------------------------------


def report(results: list[Result], requests: int, days: float) -> str:
    lines = [
        f"Overview of a store of {results[0].tasks:,} tasks ({len(WORKFLOWS)} workflows; finished "
        f"tasks spread over {days:g} days), median of {requests} requests after a warm-up:",
        "",
        "| backend | fill | overview page p50 ms | max ms | stats() p50 ms | max ms | "
        f"under {BUDGET_MS:.0f} ms | check |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        if r.skipped is not None:
            lines.append(f"| {r.backend} | skipped: {r.skipped} | | | | | | |")
            continue
        verdict = "yes" if r.page_ms < BUDGET_MS else "NO"
        lines.append(
            f"| {r.backend} | {r.fill_s:.0f} s ({r.how}) | {r.page_ms:.1f} | {r.page_max_ms:.1f} | "
            f"{r.stats_ms:.1f} | {r.stats_max_ms:.1f} | {verdict} | {r.checked} |"
        )
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The dashboard overview's time with many tasks stored.")
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS),
                        help=f"comma-separated, from {', '.join(ALL_BACKENDS)} (default: all)")
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks stored (default 1,000,000)")
    parser.add_argument("--days", type=float, default=7.0,
                        help="finished tasks' finish times spread over this many days (default 7)")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per figure (default 20)")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_BACKENDS))
    if unknown or not names:
        parser.error(f"unknown backend(s) {unknown}; choose from {', '.join(ALL_BACKENDS)}")
    if args.tasks < RUNNING * 10 or args.requests < 1 or args.days <= 0:
        parser.error(f"--tasks must be at least {RUNNING * 10}, --requests at least 1, --days > 0")
    results = []
    scratch = Path(tempfile.mkdtemp(prefix="salvador-overview-"))
    try:
        for name in names:
            async with fresh_store(name, scratch) as url:
                try:
                    results.append(await measure(name, url, args.tasks, args.days, args.requests, args.seed))
                except (OSError, ImportError) as exc:
                    results.append(Result(name, args.tasks, skipped=f"{type(exc).__name__}: {exc}"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(report(results, args.requests, args.days))
    failed = any(r.skipped is None and not r.checked.startswith("all") for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
