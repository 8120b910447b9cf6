"""Fixtures of the CLI tests: `backend_url` is a fresh SQLite file or a fresh prefix on the
shared Redis server (keys deleted afterwards), so every command is tried on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.redis_servers import delete_prefix, redis_server_factory, shared_redis_url, unique

__all__ = ["redis_server_factory"]  # a fixture, used by name


@pytest.fixture(params=["sqlite", "redis"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cli.db'}"
        return
    server = shared_redis_url()
    prefix = unique("salvador-cli-")
    yield f"{server}?prefix={prefix}"
    delete_prefix(server, prefix)
