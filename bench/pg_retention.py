"""How big the PostgreSQL backend's table and indexes grow, with and without retention.

Runs N one-step no-op tasks (default 100,000) through one worker on a fresh schema of the
local server (`$SALVADOR_BENCH_POSTGRES_URL`, default the `test` database), once with
`retention` on and once without, and prints, at every tenth of the run and after a final
purge, the table's heap and TOAST size, each index's size, and live/dead tuple counts as
PostgreSQL reports them (`pg_relation_size`, `pg_stat_user_tables`). Autovacuum runs as the
server is configured (the figures say whether it ran); nothing here vacuums by hand.

    .venv/bin/python bench/pg_retention.py                 # 100,000 tasks, retention 5 s
    .venv/bin/python bench/pg_retention.py --tasks 20000 --retention 2
    .venv/bin/python bench/pg_retention.py --private       # a private server, autovacuum on

`--private` starts a server of its own (initdb in a temporary directory, stopped by PID at
the end) with PostgreSQL's default autovacuum settings but `autovacuum_naptime=10s`, and
gives the table the per-table settings docs/backends/postgres.md recommends: a queue's
steady state in a minute instead of an hour. (A shared server may run with autovacuum
off, as this repository's test machine does: then deleted rows are never reused.)

The answer to "how much disk does a busy queue take": see docs/backends/postgres.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from salvador_core import Engine, StepContext, Workflow

POSTGRES_URL = os.environ.get("SALVADOR_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SUBMIT_BATCH = 500
REPO = Path(__file__).resolve().parents[1]
#: What docs/backends/postgres.md recommends for a busy queue's table.
TABLE_SETTINGS = (
    "autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.05, "
    "autovacuum_analyze_scale_factor = 0.02"
)


@dataclass
class Sample:
    """One reading of the table's sizes, after `done` tasks completed."""

    done: int
    heap: int
    toast: int
    indexes: dict[str, int]
    live: int
    dead: int
    autovacuums: int

    @property
    def total(self) -> int:
        return self.heap + self.toast + sum(self.indexes.values())


def _workflow() -> Workflow:
    wf = Workflow("bloat")

    @wf.step()
    async def only(ctx: StepContext) -> None:
        return None

    return wf


async def _sample(conn: Any, schema: str, done: int) -> Sample:
    table = f'"{schema}".tasks'
    heap = await conn.fetchval("SELECT pg_relation_size($1::regclass)", table)
    toast = await conn.fetchval(
        "SELECT coalesce(pg_total_relation_size(reltoastrelid), 0) FROM pg_class WHERE oid = $1::regclass",
        table,
    )
    rows = await conn.fetch(
        "SELECT indexrelid::regclass::text AS name, pg_relation_size(indexrelid) AS size "
        "FROM pg_index WHERE indrelid = $1::regclass ORDER BY 1",
        table,
    )
    stats = await conn.fetchrow(
        "SELECT n_live_tup, n_dead_tup, autovacuum_count FROM pg_stat_user_tables "
        "WHERE schemaname = $1 AND relname = 'tasks'",
        schema,
    )
    return Sample(
        done, heap, toast, {r["name"].split(".")[-1]: r["size"] for r in rows},
        stats["n_live_tup"], stats["n_dead_tup"], stats["autovacuum_count"],
    )


async def _run(server_url: str, tasks: int, retention: float | None, tuned: bool) -> list[Sample]:
    schema = f"salvador_bloat_{os.getpid()}_{secrets.token_hex(3)}"
    url = f"{server_url}?schema={schema}"
    conn = await asyncpg.connect(server_url)
    samples: list[Sample] = []
    try:
        # lease 5 s: the worker's upkeep (and so the retention purge) runs every 5 s.
        engine = Engine.from_url(url, workflows=[_workflow()], concurrency=50, lease=5.0, retention=retention)
        async with engine:
            if tuned:
                await conn.execute(f'ALTER TABLE "{schema}".tasks SET ({TABLE_SETTINGS})')
            runner = asyncio.create_task(engine.run(handle_signals=False))
            submitted = 0
            step = max(1, tasks // 10)
            next_sample = step
            began = time.monotonic()
            while submitted < tasks:
                batch = min(SUBMIT_BATCH, tasks - submitted)
                await asyncio.gather(*(engine.submit("bloat", b"x") for _ in range(batch)))
                submitted += batch
                # Keep the backlog short so the run is a steady state, not a big drain.
                while True:
                    pending = await conn.fetchval(
                        f'SELECT count(*) FROM "{schema}".tasks WHERE q_workflow IS NOT NULL'
                    )
                    if pending < 2 * SUBMIT_BATCH:
                        break
                    await asyncio.sleep(0.05)
                if submitted >= next_sample:
                    samples.append(await _sample(conn, schema, submitted))
                    next_sample += step
                    print(f"  {submitted:>7} submitted, {time.monotonic() - began:6.1f}s", file=sys.stderr)
            queued = f'SELECT count(*) FROM "{schema}".tasks WHERE q_workflow IS NOT NULL'
            while await conn.fetchval(queued):  # noqa: ASYNC110 - polls the database itself
                await asyncio.sleep(0.1)
            if retention is not None:
                # Let one more upkeep pass purge what finished last.
                await asyncio.sleep(retention + 6.0)
            samples.append(await _sample(conn, schema, tasks))
            engine.stop()
            await runner
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    return samples


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _table(title: str, samples: list[Sample]) -> str:
    names = sorted(samples[-1].indexes)
    head = ["completed", "heap MiB", "toast MiB", *(f"{n} MiB" for n in names), "total MiB",
            "live rows", "dead rows", "autovacuums"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in samples:
        cells = [f"{s.done:,}", _mib(s.heap), _mib(s.toast), *(_mib(s.indexes.get(n, 0)) for n in names),
                 _mib(s.total), f"{s.live:,}", f"{s.dead:,}", str(s.autovacuums)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--retention", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--private", action="store_true", help="a private server with autovacuum on")
    args = parser.parse_args()
    if not args.private:
        await _report(POSTGRES_URL, args.tasks, args.retention, tuned=False)
        return
    sys.path.insert(0, str(REPO))
    from tests.helpers.postgres_servers import PostgresServer

    with tempfile.TemporaryDirectory() as directory:
        server = PostgresServer(Path(directory), settings=("autovacuum_naptime=10s",))
        server.init()
        server.start()
        try:
            await _report(server.url(), args.tasks, args.retention, tuned=True)
        finally:
            server.kill()


async def _report(server_url: str, tasks: int, retention: float, *, tuned: bool) -> None:
    conn = await asyncpg.connect(server_url)
    settings = {r["name"]: r["setting"] for r in await conn.fetch(
        "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'autovacuum', "
        "'autovacuum_naptime', 'autovacuum_vacuum_scale_factor', 'autovacuum_vacuum_insert_scale_factor')"
    )}
    await conn.close()
    print(f"# PostgreSQL table size after {tasks:,} one-step tasks\n")
    print("server: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    print(f"table: {TABLE_SETTINGS if tuned else 'default storage parameters'}\n")
    print(f"with retention {retention:g} s ...", file=sys.stderr)
    kept = await _run(server_url, tasks, retention, tuned)
    print(_table(f"retention {retention:g} s (purged every 5 s)", kept) + "\n")
    print("without retention ...", file=sys.stderr)
    unbounded = await _run(server_url, tasks, None, tuned)
    print(_table("no retention (every task kept)", unbounded))


if __name__ == "__main__":
    asyncio.run(main())
