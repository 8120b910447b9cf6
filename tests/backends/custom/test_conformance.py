"""The whole conformance suite against a backend written outside the package (public API
only, no atomic shortcuts): proof that the suite works for third parties."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from salvador_core.testing import BackendConformance
from tests.helpers.custom_store import DictBackend


class TestCustomStoreConformance(BackendConformance):
    @pytest_asyncio.fixture
    async def backend(self) -> AsyncIterator[DictBackend]:
        backend = DictBackend()
        await backend.open()
        yield backend
        await backend.close()
