"""The whole conformance suite against the shared PostgreSQL server, one schema per check."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from salvador_core.testing import BackendConformance
from salvador_postgres import PostgresBackend
from salvador_postgres.testing import PostgresHooks


class TestPostgresConformance(PostgresHooks, BackendConformance):
    capabilities = frozenset({"atomic", "durable", "shared"})

    @pytest_asyncio.fixture
    async def backend(self, pg_url: str) -> AsyncIterator[PostgresBackend]:
        async with PostgresBackend.from_url(pg_url) as backend:
            yield backend
