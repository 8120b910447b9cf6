"""The whole conformance suite against `sqlite:///path.db`, one fresh file per check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from salvador_core.backends.sqlite import SQLiteBackend
from salvador_core.testing import BackendConformance
from salvador_core.testing.hooks import SQLiteHooks


class TestSQLiteConformance(SQLiteHooks, BackendConformance):
    capabilities = frozenset({"atomic", "durable", "shared"})

    @pytest_asyncio.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
        async with SQLiteBackend.from_url(f"sqlite:///{tmp_path / 't.db'}") as backend:
            yield backend

