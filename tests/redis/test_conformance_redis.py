"""The whole conformance suite against the shared Redis server, one fresh prefix per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from salvador_core.testing import BackendConformance
from salvador_redis import RedisBackend


class TestRedisConformance(BackendConformance):
    capabilities = frozenset({"atomic", "durable"})

    @pytest_asyncio.fixture
    async def backend(self, redis_url: str, redis_prefix: str) -> AsyncIterator[RedisBackend]:
        async with RedisBackend.from_url(redis_url, prefix=redis_prefix) as backend:
            yield backend
