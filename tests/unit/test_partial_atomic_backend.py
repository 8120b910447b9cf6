"""A backend with some of the atomic shortcuts but not all three is not silently run on the
split path: the engine says which one is missing.

The engine uses `submit`, `requeue` and `settle` only when a backend has all three
(`salvador_core.split.compose`); a third-party backend written from docs that listed two of
them runs as a split backend, its own `submit` and `requeue` never called; the engine
warns, naming the missing one.
"""

from __future__ import annotations

import logging

import pytest

from salvador_core import ConfigurationError, Engine
from salvador_core.split import SplitBackend
from tests.helpers.custom_store import TwoShortcutsOnly


def test_today_such_a_backend_runs_on_the_split_path() -> None:
    assert isinstance(Engine(TwoShortcutsOnly(), durability="off").backend, SplitBackend)


@pytest.mark.asyncio
async def test_an_engine_on_a_backend_lacking_one_atomic_shortcut_says_which(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused: Exception | None = None
    with caplog.at_level(logging.WARNING):
        try:
            async with Engine(TwoShortcutsOnly(), durability="off"):
                pass
        except (ConfigurationError, TypeError) as exc:
            refused = exc
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if refused is not None:
        said.append(str(refused))
    assert any("settle" in line for line in said), said
