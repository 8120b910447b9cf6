"""Fixtures of the CLI tests: `backend_url` is a fresh SQLite file or a fresh prefix on the
shared Redis server (keys deleted afterwards), so every command is tried on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.redis_servers import (
    redis_server_factory,
    sqlite_or_redis_url,
)

__all__ = ["redis_server_factory"]  # a fixture, used by name


@pytest.fixture(params=["sqlite", "redis"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with sqlite_or_redis_url(request.param, tmp_path, "cli") as url:
        yield url
