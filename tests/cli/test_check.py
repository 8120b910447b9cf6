"""`salvador check` and `salvador_core.durability`: what a crash would lose, read from each
backend's real settings (private redis-servers configured unsafely and safely, SQLite
connections with each `synchronous` mode)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from salvador_core import SplitBackend
from salvador_core.backends.memory import MemoryBackend
from salvador_core.backends.sqlite import SQLiteBackend
from salvador_core.durability import Finding, Severity, filesystem_type, findings
from tests.cli.support import invoke
from tests.helpers.redis_servers import ServerFactory, unique


def check(url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    result = invoke("check", "--url", url, "--json", *extra)
    return result.exit_code, json.loads(result.stdout)


def settings(doc: dict[str, Any]) -> dict[str, str]:
    return {f["setting"]: f["severity"] for f in doc["findings"]}


def test_redis_without_persistence_and_with_eviction_fails_the_check(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory("--appendonly", "no", "--maxmemory-policy", "allkeys-lru",
                                  "--maxmemory", "64mb")
    status, doc = check(server.url(unique()))
    assert status == 1
    assert doc["ok"] is False
    assert settings(doc) == {
        "redis appendonly=no": "critical", "redis maxmemory-policy=allkeys-lru": "critical",
    }
    eviction = next(f for f in doc["findings"] if "maxmemory" in f["setting"])
    assert "noeviction" in eviction["fix"]
    assert "without an error" in eviction["loses"]
    human = invoke("check", "--url", server.url(unique()))
    assert human.exit_code == 1
    assert "[critical] redis appendonly=no" in human.stdout
    assert "FAIL" in human.stdout


def test_redis_with_fsync_always_and_noeviction_passes_with_no_finding(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory("--appendonly", "yes", "--appendfsync", "always",
                                  "--maxmemory-policy", "noeviction")
    status, doc = check(server.url(unique()))
    assert (status, doc["findings"], doc["ok"]) == (0, [], True)


def test_redis_everysec_is_a_warning_that_only_strict_fails(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory("--appendonly", "yes", "--appendfsync", "everysec")
    status, doc = check(server.url(unique()))
    assert (status, settings(doc)) == (0, {"redis appendfsync=everysec": "warning"})
    assert check(server.url(unique()), "--strict")[0] == 1


def test_redis_check_never_prints_the_password(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory("--appendonly", "no")
    server.cli("CONFIG", "SET", "requirepass", "hunter2-secret")  # after start: it pings without auth
    url = f"redis://:hunter2-secret@127.0.0.1:{server.port}/0?prefix={unique()}"
    result = invoke("check", "--url", url)
    assert result.exit_code == 1
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert ":***@" in result.stdout


def test_sqlite_full_passes_and_normal_is_a_power_loss_warning(tmp_path: Path) -> None:
    status, doc = check(f"sqlite:///{tmp_path / 'full.db'}?synchronous=full")
    assert (status, doc["findings"]) == (0, [])
    status, doc = check(f"sqlite:///{tmp_path / 'normal.db'}")
    assert (status, settings(doc)) == (0, {"sqlite synchronous=normal": "warning"})
    assert "synchronous=full" in doc["findings"][0]["fix"]
    assert check(f"sqlite:///{tmp_path / 'normal.db'}", "--strict")[0] == 1


@pytest.mark.asyncio
async def test_sqlite_synchronous_off_on_the_connection_is_critical(tmp_path: Path) -> None:
    async with SQLiteBackend(tmp_path / "off.db", synchronous="full") as backend:
        assert await findings(backend) == []
        # The URL refuses synchronous=off; set it on the backend's own connection, the one
        # the reader must look at (the setting is per connection).
        await backend._read(lambda: backend._db().execute("PRAGMA synchronous = OFF"))
        found = await findings(backend)
    assert [(f.severity, f.setting) for f in found] == [(Severity.CRITICAL, "sqlite synchronous=off")]
    assert "corrupt" in found[0].loses


def test_memory_loses_everything(tmp_path: Path) -> None:
    status, doc = check("memory://")
    assert status == 1
    assert settings(doc) == {"memory://": "critical"}


MOUNTINFO = r"""22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /srv/shared rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
41 40 0:36 / /srv/shared/local\040disk rw shared:21 - xfs /dev/vdb rw
42 22 0:37 / /run/fast rw shared:22 - tmpfs tmpfs rw
43 22 0:38 / /mnt/box rw shared:23 - fuse.sshfs me@box:/ rw
"""


@pytest.mark.parametrize(("path", "fstype"), [
    ("/var/lib/app/tasks.db", "ext4"),
    ("/srv/shared/tasks.db", "nfs4"),
    ("/srv/shared/local disk/tasks.db", "xfs"),  # the deeper mount wins; escaped space
    ("/srv/sharedx/tasks.db", "ext4"),  # a prefix of the name is not the mount
    ("/run/fast/tasks.db", "tmpfs"),
    ("/mnt/box/tasks.db", "fuse.sshfs"),
])
def test_filesystem_type_finds_the_mount_that_holds_a_path(path: str, fstype: str) -> None:
    assert filesystem_type(path, MOUNTINFO) == fstype


@pytest.mark.asyncio
async def test_a_split_backend_reports_its_store_and_its_queue(tmp_path: Path) -> None:
    store = SQLiteBackend(tmp_path / "store.db")
    queue = MemoryBackend()
    split = SplitBackend(store, queue)
    await split.open()
    try:
        found = await findings(split)
    finally:
        await split.close()
    assert [f.setting for f in found] == ["sqlite synchronous=normal", "memory://"]


@pytest.mark.asyncio
async def test_a_backend_answers_for_itself_or_gets_a_note() -> None:
    own = Finding(Severity.WARNING, "custom", "custom replication=async", "the last second", "sync it")

    class Reporting:
        async def durability_findings(self) -> list[Finding]:
            return [own]

    class Silent:
        pass

    assert await findings(Reporting()) == [own]
    (note,) = await findings(Silent())
    assert note.severity is Severity.NOTE
    assert "durability_findings" in note.fix
