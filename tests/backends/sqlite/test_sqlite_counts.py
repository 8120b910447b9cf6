"""How the SQLite backend counts (`stats`): the `task_counts` table its triggers keep, made
and filled once on a file written before it existed, and kept by every writer of the file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from salvador_core.backends.sqlite import SQLiteBackend
from salvador_core.task import Task, TaskStatus, encode_task, new_task_id

pytestmark = pytest.mark.asyncio


def task(workflow: str = "wf", **fields: object) -> Task:
    return Task(id=new_task_id(), workflow=workflow, **fields)  # type: ignore[arg-type]


def make_it_an_older_file(path: Path) -> None:
    """Take away what this version adds on open, leaving the layout an earlier one wrote."""
    conn = sqlite3.connect(path, isolation_level=None)
    for trigger in ("task_counts_insert", "task_counts_delete", "task_counts_update"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP TABLE task_counts")
    conn.execute("DROP INDEX tasks_completed")
    conn.execute("DROP INDEX tasks_waiting")
    conn.close()


async def counted(path: Path) -> dict[str, dict[str, int]]:
    async with SQLiteBackend(path) as backend:
        return {s.workflow: s.counts for s in await backend.stats()}


async def test_a_file_written_before_task_counts_is_counted_once_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with SQLiteBackend(path) as backend:
        for _ in range(3):
            await backend.submit(task("a"))
        done = await backend.submit(task("b"))
        await backend.update(done.evolve(status=TaskStatus.COMPLETED), 1)
    make_it_an_older_file(path)
    # Two processes open it at once: the schema transaction lets one count; the other finds
    # the table made, so nothing is counted twice.
    first, second = SQLiteBackend(path), SQLiteBackend(path)
    await asyncio.gather(first.open(), second.open())
    try:
        found = {s.workflow: s.counts for s in await second.stats()}
    finally:
        await first.close()
        await second.close()
    assert found == {"a": {"pending": 3}, "b": {"completed": 1}}


async def test_writers_that_know_nothing_of_task_counts_keep_it_right(tmp_path: Path) -> None:
    """An older salvador process writes the table with its own statements; the triggers in
    the file count its writes all the same."""
    path = tmp_path / "shared.db"
    async with SQLiteBackend(path) as backend:
        kept = await backend.submit(task())
        gone = await backend.submit(task())
    older = task()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "INSERT INTO tasks (id, workflow, record, status, version, idempotency_key, updated_at, "
        "q_workflow, q_due) VALUES (?, 'wf', ?, 'pending', 1, NULL, 0, 'wf', 0)",
        (older.id, encode_task(older.evolve(version=1))),
    )
    conn.execute("UPDATE tasks SET status = 'running' WHERE id = ?", (kept.id,))
    conn.execute("UPDATE tasks SET status = 'failed' WHERE id = ?", (kept.id,))
    conn.execute("DELETE FROM tasks WHERE id = ?", (gone.id,))
    stub = "INSERT INTO tasks (id, workflow, q_workflow, q_due) VALUES (?, 'wf', 'wf', 0)"
    conn.execute(stub, (new_task_id(),))  # a queue entry without its record: no task
    conn.close()
    assert await counted(path) == {"wf": {"pending": 1, "failed": 1}}
