"""The conformance suite against a private 3-master Redis Cluster the tests start.

The same checks as on a single server (test_conformance_redis.py), but every multi-key
Lua script now runs on a real cluster, where a key outside the workflow's hash slot is a
CROSSSLOT error instead of silently working. Each test gets a fresh prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from salvador_core.testing import BackendConformance
from salvador_redis import RedisBackend
from salvador_redis.testing import RedisHooks
from tests.helpers.redis_servers import RedisCluster, unique


class TestRedisClusterConformance(RedisHooks, BackendConformance):
    capabilities = frozenset({"atomic", "durable", "shared", "cluster"})

    @pytest_asyncio.fixture
    async def backend(self, redis_cluster: RedisCluster) -> AsyncIterator[RedisBackend]:
        self.redis_url = redis_cluster.url(unique("conf:"))  # for open_second_instance
        async with RedisBackend.from_url(self.redis_url) as backend:
            yield backend
