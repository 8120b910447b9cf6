"""The PostgreSQL durability preflight (salvador_postgres/durability.py, `salvador check`):
every finding read from a private server configured to lose data (`fsync`,
`full_page_writes`, `synchronous_commit` off; a streaming standby that commits do not wait
for), none critical on the shared server, and `Engine(durability="strict")` refusing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator

import asyncpg  # type: ignore[import-untyped]
import pytest

from salvador_core import ConfigurationError, Engine, Workflow
from salvador_core.durability import Finding, Severity, blocking, findings
from salvador_postgres import PostgresBackend
from tests.cli.support import invoke
from tests.helpers.postgres_servers import PostgresServer, private_postgres, private_standby

WF = Workflow("w").step("s", lambda ctx: None)

#: The private server helper starts every server with fsync=off (fast tests); a later -c wins.
SAFE = ("fsync=on",)
UNSAFE = ("fsync=off", "full_page_writes=off", "synchronous_commit=off", "wal_writer_delay=100ms")


@pytest.fixture(scope="module")
def unsafe_server() -> Iterator[PostgresServer]:
    with private_postgres(*UNSAFE) as server:
        yield server


@pytest.fixture(scope="module")
def safe_server() -> Iterator[PostgresServer]:
    with private_postgres(*SAFE) as server:
        yield server


async def read_findings(url: str) -> list[Finding]:
    async with PostgresBackend.from_url(url) as backend:
        return await findings(backend)


def kinds(found: list[Finding]) -> list[tuple[Severity, str]]:
    return [(f.severity, f.setting) for f in found]


async def sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_fsync_full_page_writes_and_synchronous_commit_off_are_each_critical(
    unsafe_server: PostgresServer,
) -> None:
    found = await read_findings(unsafe_server.url())
    assert kinds(found) == [
        (Severity.CRITICAL, "postgresql fsync=off"),
        (Severity.CRITICAL, "postgresql full_page_writes=off"),
        (Severity.CRITICAL, "postgresql synchronous_commit=off"),
    ]
    fsync, pages, commit = found
    assert "corrupt" in fsync.loses
    assert "torn page" in pages.loses
    assert "3 x wal_writer_delay = 300 ms here" in commit.loses  # wal_writer_delay=100ms
    # Set on the server's command line: the fix says where to remove it.
    assert commit.fix == "remove -c synchronous_commit=off from the server's command line and restart it"


@pytest.mark.asyncio
async def test_strict_engine_refuses_the_unsafe_server_and_opens_the_safe_one(
    unsafe_server: PostgresServer, safe_server: PostgresServer,
) -> None:
    engine = Engine.from_url(unsafe_server.url(), workflows=[WF], durability="strict")
    with pytest.raises(
        ConfigurationError,
        match=r"durability=strict.*fsync=off.*full_page_writes=off.*synchronous_commit=off",
    ):
        await engine.open()
    async with Engine.from_url(safe_server.url(), workflows=[WF], durability="strict") as safe:
        assert await safe.submit(WF)


@pytest.mark.asyncio
async def test_a_safe_server_gives_no_finding(safe_server: PostgresServer) -> None:
    assert await read_findings(safe_server.url()) == []


@pytest.mark.asyncio
async def test_synchronous_commit_off_for_the_role_or_database_is_what_salvador_sees(
    safe_server: PostgresServer,
) -> None:
    admin = safe_server.url()
    await sql(
        admin,
        "CREATE ROLE app LOGIN",
        "CREATE DATABASE by_role OWNER app",
        "CREATE DATABASE by_database OWNER app",
        "ALTER ROLE app IN DATABASE by_role SET synchronous_commit = off",
        "ALTER DATABASE by_database SET synchronous_commit = off",
    )
    as_app = f"postgresql://app@127.0.0.1:{safe_server.port}"
    (by_role,) = await read_findings(f"{as_app}/by_role")
    (by_database,) = await read_findings(f"{as_app}/by_database")
    assert kinds([by_role, by_database]) == [(Severity.CRITICAL, "postgresql synchronous_commit=off")] * 2
    assert by_role.fix == 'ALTER ROLE "app" IN DATABASE "by_role" RESET synchronous_commit'
    assert by_database.fix.startswith('ALTER DATABASE "by_database" RESET synchronous_commit')


@pytest.mark.asyncio
async def test_settings_the_role_may_not_read_are_notes_not_errors(safe_server: PostgresServer) -> None:
    await sql(safe_server.url(), "CREATE ROLE reader LOGIN", "CREATE DATABASE hidden OWNER reader")
    url = f"postgresql://reader@127.0.0.1:{safe_server.port}/hidden"
    await sql(safe_server.url("hidden"), "REVOKE SELECT ON pg_catalog.pg_stat_replication FROM PUBLIC")
    (standbys,) = await read_findings(url)
    assert (standbys.severity, standbys.setting) == (
        Severity.NOTE, "postgresql settings unreadable: pg_stat_replication (standbys)"
    )
    assert "permission denied" in standbys.loses
    await sql(safe_server.url("hidden"), "REVOKE SELECT ON pg_catalog.pg_settings FROM PUBLIC")
    (settings,) = await read_findings(url)
    assert settings.severity is Severity.NOTE
    assert "fsync, full_page_writes, synchronous_commit" in settings.setting
    assert "pg_read_all_settings" in settings.fix


@pytest.mark.asyncio
async def test_a_standby_that_commits_do_not_wait_for_is_a_failover_warning() -> None:
    with private_postgres(*SAFE) as primary, private_standby(primary):
        url = primary.url()

        async def attached() -> bool:
            conn = await asyncpg.connect(url)
            try:
                return bool(await conn.fetchval("SELECT count(*) FROM pg_stat_replication"))
            finally:
                await conn.close()

        await eventually(attached, "the standby to stream from the primary")
        assert kinds(await read_findings(url)) == [
            (Severity.WARNING, "postgresql asynchronous replication")
        ]
        await sql(url, "ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()")

        async def synchronous() -> bool:
            return await read_findings(url) == []

        await eventually(synchronous, "the standby to be synchronous (synchronous_commit=on)")
        for mode in ("local", "remote_write"):
            await sql(url, f"ALTER ROLE postgres SET synchronous_commit = {mode}")
            (found,) = await read_findings(url)
            assert kinds([found]) == [(Severity.WARNING, f"postgresql synchronous_commit={mode}")]
            assert found.fix.startswith('ALTER ROLE "postgres" RESET synchronous_commit')
            assert "failover" in found.loses


@pytest.mark.asyncio
async def test_the_shared_server_reports_nothing_critical(pg_url: str) -> None:
    found = await read_findings(pg_url)
    assert blocking(found) == [], found


def test_salvador_check_json_on_the_unsafe_server_fails(unsafe_server: PostgresServer) -> None:
    result = invoke("check", "--url", unsafe_server.url(), "--json")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert {f["setting"]: f["severity"] for f in doc["findings"]} == {
        "postgresql fsync=off": "critical",
        "postgresql full_page_writes=off": "critical",
        "postgresql synchronous_commit=off": "critical",
    }
