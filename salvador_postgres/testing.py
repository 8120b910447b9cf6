"""The conformance suite's back doors for `PostgresBackend`, as a test-class mixin.

They write around the backend (a corrupt record, a lease that expires now), so they live
in this testing module and never on the production class:

    class TestPostgresConformance(PostgresHooks, BackendConformance): ...

`open_second_instance` opens a new backend object on the same URL and schema.
"""

from __future__ import annotations

from typing import Any

from salvador_core.task import Claim
from salvador_postgres.backend import PostgresBackend


class PostgresHooks:
    """Back doors into a PostgreSQL backend's table, through its own pool."""

    async def corrupt_record(self, backend: PostgresBackend, task_id: str, raw: bytes) -> None:
        """Overwrite the stored record of `task_id` with `raw`, bypassing every check."""
        sql = f"UPDATE {backend._sql.table} SET record = $2 WHERE id = $1 AND record IS NOT NULL"
        if await backend._db().execute(sql, task_id, raw) == "UPDATE 0":
            raise KeyError(f"no task {task_id!r} to overwrite; create it first")

    async def expire_lease(self, backend: PostgresBackend, claim: Claim) -> None:
        """Make the current lease on the task of `claim` expire now (no-op without one)."""
        sql = (
            f"UPDATE {backend._sql.table} SET q_due = clock_timestamp() - interval '1 millisecond' "
            "WHERE id = $1 AND q_receipt IS NOT NULL RETURNING q_workflow"
        )
        workflow = await backend._db().fetchval(sql, claim.task_id)
        if workflow is not None:
            backend._wake(workflow)

    async def open_second_instance(self, backend: PostgresBackend) -> Any:
        """Its own pool and LISTEN connection on the same server and schema, as a second
        process has."""
        other = PostgresBackend(backend.settings)
        await other.open()
        return other
