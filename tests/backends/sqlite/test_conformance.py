"""The whole conformance suite against `sqlite:///path.db`, one fresh file per check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from salvador_core.backends.sqlite import SQLiteBackend
from salvador_core.testing import BackendConformance


class TestSQLiteConformance(BackendConformance):
    capabilities = frozenset({"atomic", "durable", "shared"})

    @pytest_asyncio.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
        async with SQLiteBackend.from_url(f"sqlite:///{tmp_path / 't.db'}") as backend:
            yield backend

    async def open_second_instance(self, backend: SQLiteBackend) -> SQLiteBackend:
        """Another connection (and database thread) on the same file, as a second process has."""
        other = SQLiteBackend(backend.path)
        await other.open()
        return other
