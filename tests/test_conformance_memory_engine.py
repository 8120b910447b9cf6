"""Engine checks alone against `memory://` (folded into test_conformance_memory.py later)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from salvador_core.backends.memory import MemoryBackend
from salvador_core.testing.engine_checks import EngineChecks


class TestMemoryEngine(EngineChecks):
    capabilities = frozenset({"atomic"})

    @pytest_asyncio.fixture
    async def backend(self) -> AsyncIterator[MemoryBackend]:
        async with MemoryBackend() as b:
            yield b
