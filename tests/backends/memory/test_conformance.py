"""The whole conformance suite against `memory://`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from salvador_core.backends.memory import MemoryBackend
from salvador_core.testing import BackendConformance
from salvador_core.testing.hooks import MemoryHooks


class TestMemoryConformance(MemoryHooks, BackendConformance):
    capabilities = frozenset({"atomic"})

    @pytest_asyncio.fixture
    async def backend(self) -> AsyncIterator[MemoryBackend]:
        async with MemoryBackend() as backend:
            yield backend
