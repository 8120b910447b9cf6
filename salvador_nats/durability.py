"""What a crash would lose with a NATS JetStream backend as it is configured now.

`nats_findings` reads, through the backend's own connection, the stream's and the bucket's
configuration (`STREAM.INFO` of `<stream>` and `KV_<bucket>`) and the version the server
announced when the client connected, and turns each risk into a `Finding`
(salvador_core/durability.py):

- memory storage, `persist_mode: async`, or limits that delete messages (`max_age`, or
  `max_msgs`/`max_bytes`/per-subject limits that discard old ones): a restart, a crash or
  time loses tasks (CRITICAL);
- one replica: a lost disk or machine loses everything (WARNING: run three);
- the server's fsync interval: JetStream acknowledges a write before it reaches the disk
  and syncs every `sync_interval` (2 minutes by default), so an OS crash or power loss
  loses up to that much (WARNING; Jepsen found acknowledged writes lost this way in NATS
  2.12.1).

The fsync interval is not visible to a client: neither the connect INFO nor
`$JS.API.INFO` carries it, and `$SYS.REQ.SERVER.PING.VARZ` answers only the system account,
which cannot use JetStream. It is read from each server's monitoring endpoint (`/varz`,
`jetstream.config.sync_interval` and `sync_always` since 2.10) when the URL's `monitor` option
(or, without it, `$SALVADOR_NATS_MONITOR`) names them
(`http://nats-0:8222,http://nats-1:8222`). Without it, a server older than 2.10 is
known to sync every 2 minutes (the interval was fixed until `sync_interval` arrived in 2.10.0),
and a newer one gets a NOTE. Monitoring endpoints that do not answer are NOTEs too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js import errors as jx

from salvador_core.config import redact_url
from salvador_core.durability import Finding, Severity
from salvador_core.errors import ConfigurationError
from salvador_nats.connection import NatsSettings

__all__ = ["MONITOR_ENV", "monitor_urls", "nats_findings", "release_findings", "stream_findings",
           "sync_findings"]

#: Monitoring endpoints (comma-separated, one per server) the fsync interval is read from.
MONITOR_ENV = "SALVADOR_NATS_MONITOR"
#: nats-server's file-store sync interval when none is configured (and the only one before 2.10).
DEFAULT_SYNC_S = 120.0
#: The release that made the sync interval configurable (nats-server pull request 4483).
SYNC_CONFIGURABLE = (2, 10, 0)
#: Releases in which crashed server processes could delete a whole stream (fixed in 2.10.23).
STREAM_LOSS_RELEASES = ((2, 10, 20), (2, 10, 22))
#: Seconds a monitoring endpoint gets to answer.
MONITOR_TIMEOUT_S = 3.0

_JEPSEN_POWER = ("Jepsen, NATS 2.12.1: a coordinated power failure lost 131,418 of 930,005 "
                 "acknowledged messages")
#: What private nats-server 2.15.1 processes lost of a persist_mode=async stream when
#: SIGKILLed right after 2,000 acknowledged publishes (five probes: 2, 10, 19, 44, 70).
_ASYNC_PERSIST_PROBE = ("five servers SIGKILLed right after 2,000 acknowledged publishes lost 2 to "
                        "70 of them")
_RELEASE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class Part:
    """The stream or the bucket, as findings name them."""

    kind: str  # "stream" or "bucket"
    name: str  # the stream's name, or the bucket's (its stream is KV_<name>)
    holds: str  # what it holds, in plain words

    @property
    def stream(self) -> str:
        return self.name if self.kind == "stream" else f"KV_{self.name}"


async def nats_findings(js: JetStreamContext, nc: Client, settings: NatsSettings) -> list[Finding]:
    """The findings for the backend's stream, bucket and server(s). Connection errors pass
    through (the backend maps them); a refused stream info is a NOTE."""
    monitors = list(settings.monitor) or monitor_urls()
    found: list[Finding] = []
    for part in (
        Part("stream", settings.stream, "queued and delayed tasks"),
        Part("bucket", settings.bucket, "task records"),
    ):
        try:
            info = await js.stream_info(part.stream)
        except jx.APIError as exc:  # NotFoundError included: deleted since the backend opened
            found.append(Finding(
                Severity.NOTE, "nats", f"nats {part.kind} {part.name!r} unreadable",
                f"not checked: its storage, replicas and limits ({exc.description or exc})",
                f"allow $JS.API.STREAM.INFO.{part.stream} to salvador's user",
            ))
            continue
        found.extend(stream_findings(part, info.config))
    release = _connected_release(nc)
    server = settings.where.split("?", 1)[0]  # the redacted URL without salvador's options
    if release is not None:
        found.extend(release_findings(release, f"the server at {server}"))
    if monitors:
        replies = await asyncio.gather(*(_varz(url) for url in monitors))
        for url, varz in zip(monitors, replies, strict=True):
            found.extend(_monitored(url, varz))
    else:
        found.extend(sync_findings(release, None, server=f"the server at {server}"))
    return list(dict.fromkeys(found))


def monitor_urls(environ: Mapping[str, str] | None = None) -> list[str]:
    """The monitoring URLs in `$SALVADOR_NATS_MONITOR`; `ConfigurationError` for one that is
    not http(s)."""
    raw = (os.environ if environ is None else environ).get(MONITOR_ENV, "")
    urls = [url.strip() for url in raw.split(",") if url.strip()]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                f"${MONITOR_ENV}: {redact_url(url)!r} is not the http:// or https:// URL of a "
                "nats-server monitoring port (e.g. http://nats:8222, comma-separated for several)"
            )
    return urls


# -- the stream and the bucket ----------------------------------------------------------


def stream_findings(part: Part, config: api.StreamConfig) -> list[Finding]:
    """What the stream or bucket's own configuration loses."""
    label = f"nats {part.kind} {part.name!r}"
    recreate = (
        f"point salvador at a new {part.kind} (?{part.kind}=<new name>: it creates it with file "
        f"storage and no limits) once workers on the old one have drained it; JetStream cannot "
        f"change this in place"
    )
    found: list[Finding] = []
    if config.storage == api.StorageType.MEMORY:
        loses = ("every task record when nats-server restarts or crashes: the bucket is held in memory"
                 if part.kind == "bucket" else
                 "every queued and delayed task when nats-server restarts or crashes: the stream is "
                 "held in memory (the records stay, pending, but nothing delivers them again)")
        found.append(Finding(Severity.CRITICAL, "nats", f"{label} storage=memory", loses, recreate))
    if config.persist_mode == api.PersistMode.ASYNC:
        found.append(Finding(
            Severity.CRITICAL, "nats", f"{label} persist_mode=async",
            f"the {part.holds} written just before nats-server is killed or crashes: it acknowledges "
            f"writes before they reach the file store ({_ASYNC_PERSIST_PROBE})",
            f"recreate it without persist_mode=async: {recreate}",
        ))
    found.extend(_limits(part, label, config))
    if (config.num_replicas or 1) < 2:
        found.append(Finding(
            Severity.WARNING, "nats", f"{label} replicas=1",
            f"all its {part.holds} if the disk or the machine of the one server that stores it is "
            "lost: there is no other copy",
            f"run a 3-node JetStream cluster and give it 3 replicas (nats stream edit {part.stream} "
            "--replicas 3; ?replicas=3 when salvador creates it)",
        ))
    return found


def _limits(part: Part, label: str, config: api.StreamConfig) -> list[Finding]:
    """Limits that make the server delete messages on its own, silently."""
    found: list[Finding] = []
    if config.max_age:
        found.append(Finding(
            Severity.CRITICAL, "nats", f"{label} max_age={_duration(config.max_age)}",
            f"{part.holds} older than {_duration(config.max_age)}, unfinished ones included: the "
            "server deletes them silently",
            f"nats stream edit {part.stream} --max-age 0 (finished tasks are purged by the engine's "
            "retention setting)",
        ))
    limits: list[str] = []
    # With discard new a full stream refuses writes with an error instead: nothing is lost.
    if config.discard != api.DiscardPolicy.NEW:
        limits += [f"{name}={value}" for name, value in (("max_msgs", config.max_msgs),
                                                         ("max_bytes", config.max_bytes)) if (value or 0) > 0]
    # Per subject, old messages go unless discard new applies per subject too. A bucket's
    # per-subject limit is its history (1: only a key's latest value is kept), not a loss.
    per_subject = config.max_msgs_per_subject or 0
    refused = config.discard == api.DiscardPolicy.NEW and bool(config.discard_new_per_subject)
    if part.kind == "stream" and per_subject > 0 and not refused:
        limits.append(f"max_msgs_per_subject={per_subject}")
    if limits:
        found.append(Finding(
            Severity.CRITICAL, "nats", f"{label} {' '.join(limits)}",
            f"the oldest {part.holds}, silently, each time a limit is reached",
            f"remove the limits (nats stream edit {part.stream}), or use discard new so that a full "
            f"{part.kind} refuses writes with an error instead",
        ))
    return found


# -- the server -----------------------------------------------------------------------


def release_findings(release: tuple[int, int, int], server: str) -> list[Finding]:
    """Known flaws of a nats-server release."""
    low, high = STREAM_LOSS_RELEASES
    if low <= release <= high:
        version = ".".join(map(str, release))
        return [Finding(
            Severity.CRITICAL, "nats", f"nats-server {version}",
            f"whole streams: in nats-server 2.10.20 to 2.10.22 server processes that crash can "
            f"delete a stream (Jepsen and the NATS maintainers; {server} runs {version})",
            "upgrade nats-server to 2.10.23 or later",
        )]
    return []


def sync_findings(release: tuple[int, int, int] | None, jetstream: Mapping[str, Any] | None, *,
                  server: str) -> list[Finding]:
    """The fsync interval of one server (`server`: how to name it): from its varz
    `jetstream.config` when read, else what its release says (`release` None: unknown)."""
    fix = ("set `jetstream { sync_interval: always }` in every server's configuration and restart "
           "it (an fsync before each acknowledgement: slower writes)")

    def exposure(interval: str) -> str:
        return (f"up to the last {interval} of acknowledged writes (submits, checkpoints) on an OS "
                f"crash or power loss of {server} (a crash of nats-server alone loses nothing); on "
                f"a cluster, when its nodes lose power together ({_JEPSEN_POWER})")

    if release is not None and release < SYNC_CONFIGURABLE:
        version = ".".join(map(str, release))
        return [Finding(
            Severity.WARNING, "nats", f"nats-server {version} fsync every 2m (fixed)",
            exposure("2 minutes"), f"upgrade nats-server to 2.10 or later (before 2.10 the interval "
            f"cannot be changed), then {fix}",
        )]
    if jetstream is None:
        return [Finding(
            Severity.NOTE, "nats", "nats-server sync_interval not readable",
            f"not checked: a client cannot read the fsync interval of {server}; with the default "
            "(2 minutes) an OS crash or power loss loses up to the last 2 minutes of acknowledged "
            "writes",
            "add ?monitor=http://<server>:8222 to the URL (each server's monitoring port, "
            f"comma-separated; or set ${MONITOR_ENV}) so that salvador check reads it; and {fix}",
        )]
    if jetstream.get("sync_always"):
        return []
    interval = jetstream.get("sync_interval")
    seconds = DEFAULT_SYNC_S if not interval else float(interval) / 1e9
    return [Finding(
        Severity.WARNING, "nats", f"nats-server sync_interval={_duration(seconds)}",
        exposure(_duration(seconds)), fix,
    )]


def _monitored(url: str, varz: dict[str, Any] | str) -> list[Finding]:
    """The findings of one server's varz, or a NOTE when it did not answer (`varz` = why)."""
    shown = redact_url(url)
    if isinstance(varz, str):
        return [Finding(
            Severity.NOTE, "nats", f"nats monitor {shown} unreadable",
            f"not checked: that server's fsync interval ({varz})",
            f"make the URL's `monitor` option (or ${MONITOR_ENV}) name each server's monitoring "
            "port (`http: 8222` in its configuration, or -m 8222)",
        )]
    release = _release(str(varz.get("version", "")))
    name = varz.get("server_name") or shown
    config = (varz.get("jetstream") or {}).get("config")
    if config is None:
        return []  # JetStream is off on that server: it stores nothing
    return [*(release_findings(release, name) if release else []),
            *sync_findings(release, config, server=f"{name} ({shown})")]


async def _varz(url: str) -> dict[str, Any] | str:
    """The server's /varz document, or why it could not be read."""
    target = url if urlsplit(url).path.rstrip("/").endswith("/varz") else url.rstrip("/") + "/varz"

    def get() -> Any:
        with urllib.request.urlopen(target, timeout=MONITOR_TIMEOUT_S) as reply:
            return json.load(reply)

    try:
        varz = await asyncio.to_thread(get)
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if not isinstance(varz, dict) or "server_id" not in varz:
        return "its answer is not a nats-server /varz document"
    return varz


def _connected_release(nc: Client) -> tuple[int, int, int] | None:
    version = nc.connected_server_version
    try:
        release = (version.major, version.minor, version.patch)
    except (ValueError, TypeError):
        return None
    return None if release == (0, 0, 0) else release


def _release(text: str) -> tuple[int, int, int] | None:
    match = _RELEASE.match(text)
    if match is None:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def _duration(seconds: float) -> str:
    """`1h`, `2m`, `10s`, `500ms`: as nats-server's configuration spells durations."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"
