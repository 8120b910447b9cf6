"""Fixtures of the PostgreSQL backend's tests.

`postgres_url` is the shared server ($SALVADOR_TEST_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/test): unreachable means skip, or fail with
SALVADOR_REQUIRE_BACKENDS=1. `pg_schema` is a fresh schema of one test, dropped afterwards;
`pg_url` is the shared server's URL with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.helpers.postgres_servers import (
    PostgresServer,
    drop_schema,
    private_postgres,
    shared_postgres_url,
    unique_schema,
    with_options,
)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The shared server's URL, after checking that it answers."""
    return shared_postgres_url()


@pytest_asyncio.fixture
async def pg_schema(postgres_url: str) -> AsyncIterator[str]:
    """A schema of this test alone, dropped afterwards."""
    schema = unique_schema()
    yield schema
    await drop_schema(postgres_url, schema)


@pytest.fixture
def pg_url(postgres_url: str, pg_schema: str) -> str:
    return with_options(postgres_url, schema=pg_schema)


@pytest.fixture
def pg_server() -> Iterator[PostgresServer]:
    """A private server of this test (free port, temp dir), stopped by PID afterwards."""
    with private_postgres() as server:
        yield server
