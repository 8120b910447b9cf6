"""Fixtures of the Redis backend's tests.

`redis_url` is the shared server ($SALVADOR_TEST_REDIS_URL, default
redis://127.0.0.1:6379/0): unreachable means skip, or fail with SALVADOR_REQUIRE_BACKENDS=1.
`redis_prefix` is a fresh tenant prefix whose keys are deleted after the test. Private
servers (`redis_server_factory`, `redis_cluster`) come from servers.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.redis_servers import (
    delete_prefix,
    redis_cluster,
    redis_server_factory,
    shared_redis_url,
    unique,
)

__all__ = ["redis_cluster", "redis_server_factory"]  # fixtures, used by name


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared server's URL, after checking that it answers."""
    return shared_redis_url()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A tenant prefix of this test alone; every key under it is deleted afterwards."""
    prefix = unique("salvador-test-")
    yield prefix
    delete_prefix(redis_url, prefix)
