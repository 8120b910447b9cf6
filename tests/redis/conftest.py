"""Fixtures of the Redis backend's tests.

`redis_url` is the shared server ($SALVADOR_TEST_REDIS_URL, default
redis://127.0.0.1:6379/0): unreachable means skip, or fail with SALVADOR_REQUIRE_BACKENDS=1.
`redis_prefix` is a fresh tenant prefix whose keys are deleted after the test. Private
servers (`redis_server_factory`, `redis_cluster`) come from servers.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from servers import redis_cluster, redis_server_factory, unique

__all__ = ["redis_cluster", "redis_server_factory"]  # fixtures, used by name

DEFAULT_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared server's URL, after checking that it answers."""
    import redis

    url = os.environ.get("SALVADOR_TEST_REDIS_URL", DEFAULT_URL)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        reason = f"Redis at $SALVADOR_TEST_REDIS_URL ({DEFAULT_URL} by default) is unreachable: {exc}"
        if os.environ.get("SALVADOR_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"{reason} (SALVADOR_REQUIRE_BACKENDS=1 forbids skipping)")
        pytest.skip(reason)
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A tenant prefix of this test alone; every key under it is deleted afterwards."""
    import redis

    prefix = unique("salvador-test-")
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
