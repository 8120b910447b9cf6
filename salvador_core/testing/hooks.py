"""The suite's back doors for the backends salvador_core ships, as test-class mixins.

A back door writes around a backend (a corrupt record, a lease that expires now) so a
check can inject a fault without sleeping. It corrupts data on purpose, so it lives here,
in the testing layer, and never on the production class. Mix one in before
`BackendConformance`:

    class TestMyMemoryConformance(MemoryHooks, BackendConformance): ...

Users who test their own code against `memory://` or `sqlite:///` can use the same hooks
to inject faults. Redis's hooks are in `salvador_redis.testing`.
"""

from __future__ import annotations

from typing import Any

from salvador_core.backends.memory import MemoryBackend
from salvador_core.backends.sqlite import SQLiteBackend
from salvador_core.task import Claim


class MemoryHooks:
    """Back doors into a `MemoryBackend`'s dictionaries."""

    async def corrupt_record(self, backend: MemoryBackend, task_id: str, raw: bytes) -> None:
        """Replace the stored record of `task_id` with `raw`, bypassing every check."""
        if task_id not in backend._records:
            raise KeyError(f"no task {task_id!r} to overwrite; create it first")
        backend._records[task_id] = raw
        backend._versions.pop(task_id, None)

    async def expire_lease(self, backend: MemoryBackend, claim: Claim) -> None:
        """Make the current lease on the task of `claim` expire now."""
        lease = backend._leases.get(claim.task_id)
        if lease is not None:
            lease.deadline = 0.0


class SQLiteHooks:
    """Back doors into a SQLite database file, through the backend's own connection."""

    async def corrupt_record(self, backend: SQLiteBackend, task_id: str, raw: bytes) -> None:
        sql = "UPDATE tasks SET record = ? WHERE id = ? AND record IS NOT NULL"
        if not await backend._run(backend._execute_sync, sql, (raw, task_id)):
            raise KeyError(f"no task {task_id!r} to overwrite; create it first")

    async def expire_lease(self, backend: SQLiteBackend, claim: Claim) -> None:
        sql = "UPDATE tasks SET q_due = 0 WHERE id = ? AND q_receipt IS NOT NULL RETURNING q_workflow"
        for (workflow,) in await backend._run(backend._rows_sync, sql, (claim.task_id,)):
            backend._announce(workflow)

    async def open_second_instance(self, backend: SQLiteBackend) -> Any:
        """Another connection (and database thread) on the same file, as a second process has."""
        other = SQLiteBackend(backend.path)
        await other.open()
        return other
