"""Fixtures of the NATS backend's tests.

`nats_url` is the shared server ($SALVADOR_TEST_NATS_URL, default nats://127.0.0.1:4222):
unreachable means skip, or fail with SALVADOR_REQUIRE_BACKENDS=1. `nats_names` is a fresh
stream and bucket name for one test, both deleted afterwards. Private servers come from
tests/helpers/nats_servers.py (`nats_servers`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.nats_servers import (
    delete_stream_and_bucket,
    nats_servers,
    shared_nats_url,
    unique_names,
)

__all__ = ["nats_servers"]  # a fixture, used by name


@pytest.fixture(scope="session")
def nats_url() -> str:
    """The shared server's URL, after checking that it answers with JetStream."""
    return shared_nats_url()


@pytest.fixture
def nats_names(nats_url: str) -> Iterator[tuple[str, str]]:
    """(stream, bucket) of this test alone; both are deleted afterwards, and so are the
    `<stream>x` and `<bucket>x` a test may open beside them as a probe."""
    stream, bucket = unique_names()
    yield stream, bucket
    delete_stream_and_bucket(nats_url, stream, bucket)
    delete_stream_and_bucket(nats_url, stream + "x", bucket + "x")
