"""Fixtures the backends' fault tests share: a work directory with the side-effect log,
worker processes on any URL (tests/helpers/worker_app.py), and producer engines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from salvador_core import Engine
from tests.helpers.worker_app import build
from tests.helpers.workers import Workers


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "effects.log").touch()
    return tmp_path


@pytest.fixture
def workers_for(workdir: Path) -> Iterator[Callable[[str], Workers]]:
    """Starts worker processes on a URL; every one is stopped by PID after the test."""
    pools: list[Workers] = []

    def make(url: str) -> Workers:
        pools.append(Workers(url, workdir))
        return pools[-1]

    yield make
    for pool in pools:
        pool.stop_all()


@pytest_asyncio.fixture
async def producer_for(workdir: Path) -> AsyncIterator[Callable[[str], Awaitable[Engine]]]:
    """Opens an engine (the test's producer) on a URL; all closed after the test."""
    engines: list[Engine] = []

    async def make(url: str) -> Engine:
        engine = Engine.from_url(url, workflows=build(workdir, "none"))
        await engine.open()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        try:
            await engine.close()
        except Exception:
            pass
