"""The whole conformance suite against the shared Redis server, one fresh prefix per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from salvador_core.testing import BackendConformance
from salvador_redis import RedisBackend
from salvador_redis.testing import RedisHooks


class TestRedisConformance(RedisHooks, BackendConformance):
    capabilities = frozenset({"atomic", "durable", "shared"})

    @pytest_asyncio.fixture
    async def backend(self, redis_url: str, redis_prefix: str) -> AsyncIterator[RedisBackend]:
        self.redis_url = redis_url  # for open_second_instance
        async with RedisBackend.from_url(redis_url, prefix=redis_prefix) as backend:
            yield backend
