"""`Engine(durability=...)`: the preflight at open refuses (strict) or warns once (warn)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from salvador_core import ConfigurationError, Engine, Workflow
from tests.helpers.redis_servers import ServerFactory, unique

pytestmark = pytest.mark.asyncio
WF = Workflow("w").step("s", lambda ctx: None)


async def test_strict_refuses_a_redis_that_would_lose_tasks_and_opens_a_safe_one(
    redis_server_factory: ServerFactory,
) -> None:
    unsafe = redis_server_factory(
        "--appendonly", "no", "--maxmemory-policy", "allkeys-lru", "--maxmemory", "64mb"
    )
    engine = Engine.from_url(unsafe.url(unique()), workflows=[WF], durability="strict")
    with pytest.raises(
        ConfigurationError, match=r"durability=strict.*appendonly=no.*maxmemory-policy=allkeys-lru"
    ):
        await engine.open()
    with pytest.raises(ConfigurationError, match="not open"):
        await engine.submit(WF)  # nothing was left open
    safe = redis_server_factory(
        "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction"
    )
    async with Engine.from_url(safe.url(unique()), workflows=[WF], durability="strict") as engine:
        assert await engine.submit(WF)


async def test_strict_refuses_memory_and_warn_says_nothing_about_it(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigurationError, match=r"durability=strict.*memory"):
        await Engine.from_url("memory://", workflows=[WF], durability="strict").open()
    with caplog.at_level(logging.WARNING, logger="salvador"):
        async with Engine.from_url("memory://", workflows=[WF]):
            pass
    assert not [r for r in caplog.records if "durability" in r.getMessage()]


async def test_warn_logs_each_critical_finding_once_per_engine(
    redis_server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    unsafe = redis_server_factory("--appendonly", "no")
    engine = Engine.from_url(unsafe.url(unique()), workflows=[WF])
    with caplog.at_level(logging.WARNING, logger="salvador"):
        async with engine:
            pass
        async with engine:
            pass
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("durability:")]
    assert len(warned) == 1, warned
    assert "appendonly=no" in warned[0]
    assert "Fix:" in warned[0]


async def test_off_skips_the_preflight_and_bad_modes_are_refused(tmp_path: Path) -> None:
    async with Engine.from_url("memory://", workflows=[WF], durability="off") as engine:
        assert await engine.submit(WF)
    with pytest.raises(ConfigurationError, match="durability must be one of warn, strict, off"):
        Engine.from_url(f"sqlite:///{tmp_path / 't.db'}", durability="paranoid")
