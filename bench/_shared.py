"""What the bench scripts share: the PostgreSQL server they use and its clean-up, and the
SQLite bulk insert they fill stores with. Imported by bench.py, overview.py and
split_repair.py, which run from this folder (it is first on their `sys.path`)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from typing import Any

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
