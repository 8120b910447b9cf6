"""Fixtures of the dashboard tests: a seeded backend (a fresh SQLite file, or a fresh prefix
on the shared Redis server whose keys are deleted afterwards), an empty backend of each
kind (`any_backend_url`), dashboard servers started and stopped per test, and Debian's
Chromium driven by Playwright (scripts/ensure-browser.sh installs it; Playwright's own
browser download is not used)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from salvador_core import Engine, Task
from tests.dashboard.app import Seeded, seed, workflows
from tests.dashboard.servers import Servers
from tests.helpers.nats_servers import delete_stream_and_bucket, shared_nats_url, unique_names
from tests.helpers.postgres_servers import drop_schema, shared_postgres_url, unique_schema, with_options
from tests.helpers.redis_servers import delete_prefix, shared_redis_url, sqlite_or_redis_url, unique

_T = TypeVar("_T")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]


def run_async(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to its end from a sync test, in a thread of its own: Playwright's sync
    API keeps an event loop registered on the test's thread, where asyncio.run refuses."""

    async def call() -> _T:
        return await make()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, call()).result(timeout=60)


def in_thread(call: Callable[[], _T]) -> _T:
    """`call()` in a thread of its own, for helpers that run an event loop themselves (the
    same reason as `run_async`)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result(timeout=60)


@pytest.fixture(params=["sqlite", "redis"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with sqlite_or_redis_url(request.param, tmp_path, "dashboard") as url:
        yield url


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres", "nats"])
def any_backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty backend of every kind salvador ships, cleaned up afterwards: a fresh SQLite
    file, Redis prefix, PostgreSQL schema, NATS stream and bucket (on the shared servers).
    `memory://` lives inside one engine: use it through that engine only."""
    kind = request.param
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'dashboard.db'}"
    elif kind == "redis":
        server = shared_redis_url()
        prefix = unique("salvador-dash-")
        yield f"{server}?prefix={prefix}"
        delete_prefix(server, prefix)
    elif kind == "postgres":
        server = in_thread(shared_postgres_url)
        schema = unique_schema("salvador_dash_")
        yield with_options(server, schema=schema)
        run_async(lambda: drop_schema(server, schema))
    else:
        server = in_thread(shared_nats_url)
        stream, bucket = unique_names()
        yield f"{server}?stream={stream}&bucket={bucket}"
        in_thread(lambda: delete_stream_and_bucket(server, stream, bucket))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dashboard.db'}"


@pytest.fixture
def seeded(backend_url: str) -> Seeded:
    return run_async(lambda: seed(backend_url))


@pytest.fixture
def seeded_sqlite(sqlite_url: str) -> Seeded:
    return run_async(lambda: seed(sqlite_url))


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def stored(url: str, task_id: str) -> Task | None:
    """The task as the backend holds it now, read around the dashboard."""

    async def read() -> Task | None:
        async with Engine.from_url(url, workflows=workflows, observers=[], durability="off") as engine:
            return await engine.get_task(task_id)

    return run_async(read)


@pytest.fixture(scope="module")  # not session: a live sync Playwright leaves a loop running here
def browser() -> Iterator[Any]:
    """Chromium at /usr/bin/chromium, headless (missing: skip, or fail under
    SALVADOR_REQUIRE_BACKENDS=1)."""
    if not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} is missing; run scripts/ensure-browser.sh"
        if os.environ.get("SALVADOR_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"{reason} (SALVADOR_REQUIRE_BACKENDS=1 forbids skipping)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context and page; console errors (a CSP violation, a script error)
    are collected in `page.errors` for the test to check."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    errors: list[str] = []
    tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("dialog", lambda dialog: dialog.accept())
    tab.errors = errors
    try:
        yield tab
    finally:
        context.close()
