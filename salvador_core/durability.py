"""The durability preflight: what a crash would lose with a backend as it is configured now.

`await findings(backend)` reads the backend's own settings (through its open connection)
and returns one `Finding` per risk: what is lost, in plain words, and the fix. An empty list
means salvador knows of nothing a crash would lose. `salvador check` prints them; an engine
may call it when it opens (it costs a few reads: two PRAGMAs, three Redis commands, two
PostgreSQL queries, or two JetStream stream infos, and never raises for a setting it cannot
read: that becomes a `NOTE`).

Severity says what it takes to lose tasks:

- `CRITICAL`: a crash or restart of a process or server, or memory pressure, loses stored
  tasks (memory://, Redis without persistence or with eviction, SQLite with
  `synchronous=off` or on a network filesystem, PostgreSQL with `synchronous_commit=off`,
  NATS memory storage or limits that delete messages), or an OS crash can corrupt the
  whole database (PostgreSQL `fsync=off` or `full_page_writes=off`).
- `WARNING`: only an operating-system crash, a power loss, a lost disk or a failover loses
  the last writes (SQLite `synchronous=normal`, Redis `appendfsync everysec`, NATS's fsync
  interval or a single replica, a PostgreSQL standby that commits do not wait for): the
  usual trade of speed or cost for some exposure, said out loud.
- `NOTE`: something salvador could not check.

A backend of any other kind answers for itself with an optional method:

    async def durability_findings(self) -> list[Finding]: ...

The core reads memory://, sqlite:/// and redis:// itself (single server; a Redis Cluster
is checked node by node). postgresql:// and nats:// answer for themselves, as above
(salvador_postgres/durability.py: `fsync`, `full_page_writes`, `synchronous_commit`,
standbys; salvador_nats/durability.py: storage, replicas, limits and persistence of the
stream and the bucket, the server's fsync interval). A `SplitBackend` is the findings of its
store and of its queue.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["Finding", "Severity", "blocking", "filesystem_type", "findings", "halves"]

#: Filesystem types (as in /proc/self/mountinfo) on which SQLite's file locks are not
#: reliable (several machines, or a user-space layer in between): two writers can corrupt.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph",
    "glusterfs", "lustre", "gpfs", "ocfs2", "davfs", "fuse.sshfs", "fuse.glusterfs",
    "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "fuse.cephfs", "fuse.davfs2",
})
#: Filesystems held in RAM: the database does not survive a reboot.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})

_SQLITE_SYNCHRONOUS = {0: "off", 1: "normal", 2: "full", 3: "extra"}
_EVICTION_PROBE = "an allkeys-lru server probed with 4,000 tasks silently dropped 3,271 task records"


class Severity(str, Enum):
    """What it takes to lose tasks (see the module docstring)."""

    CRITICAL = "critical"
    WARNING = "warning"
    NOTE = "note"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Finding:
    """One durability risk. `setting`: what was found (e.g. `redis appendonly=no`); `loses`:
    what a crash loses, in plain words; `fix`: what to change."""

    severity: Severity
    backend: str
    setting: str
    loses: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity.value,
            "backend": self.backend,
            "setting": self.setting,
            "loses": self.loses,
            "fix": self.fix,
        }


async def findings(backend: Any) -> list[Finding]:
    """What a crash would lose with `backend` (opened) as configured now; [] if nothing known.

    Uses the backend's own `durability_findings()` when it has one; else a built-in reader
    for memory://, sqlite:/// and redis://; a `SplitBackend` gives its store's and queue's.
    Raises `BackendUnavailableError` only when the server stops answering meanwhile."""
    own = getattr(backend, "durability_findings", None)
    if own is not None:
        return list(await own())
    from salvador_core.split import SplitBackend

    if isinstance(backend, SplitBackend):
        found: list[Finding] = []
        for part in halves(backend):
            found.extend(await findings(part))
        return _unique(found)
    from salvador_core.backends.memory import MemoryBackend
    from salvador_core.backends.sqlite import SQLiteBackend

    if isinstance(backend, MemoryBackend):
        return [_memory_finding()]
    if isinstance(backend, SQLiteBackend):
        return await _sqlite_findings(backend)
    # Only a process that imported salvador_redis can hold a RedisBackend; looking it up
    # this way keeps the core from importing a driver.
    redis_module = sys.modules.get("salvador_redis.backend")
    if redis_module is not None and isinstance(backend, redis_module.RedisBackend):
        return await _redis_findings(backend)
    return [
        Finding(
            Severity.NOTE, type(backend).__name__, "unknown backend",
            "salvador cannot tell what a crash would lose with this backend",
            f"give {type(backend).__name__} an `async def durability_findings(self)` method "
            "(see salvador_core.durability)",
        )
    ]


def halves(split: Any) -> list[Any]:
    """The store and the queue of a `SplitBackend`: one object when they are the same."""
    store, queue = split.store, split.queue
    return [store] if queue is store else [store, queue]


def _unique(found: Iterable[Finding]) -> list[Finding]:
    return list(dict.fromkeys(found))


def _memory_finding() -> Finding:
    return Finding(
        Severity.CRITICAL, "memory", "memory://",
        "every task: memory:// keeps tasks in this process only, so they are gone when it "
        "exits, crashes or restarts, and no other process sees them",
        "use sqlite:///path/to/tasks.db (one machine) or redis://host:6379/0 (any number)",
    )


# -- SQLite ---------------------------------------------------------------------------------


async def _sqlite_findings(backend: Any) -> list[Finding]:
    """Read `synchronous` and `journal_mode` on the backend's own connection (they are
    per-connection settings, so only its connection knows), and the file's filesystem."""

    def read(conn: Any) -> tuple[int, str]:
        synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return int(synchronous), str(journal).lower()

    synchronous, journal = await backend._read(lambda: read(backend._db()))
    path: str = backend.path
    found: list[Finding] = []
    mode = _SQLITE_SYNCHRONOUS.get(synchronous, str(synchronous))
    if journal in ("off", "memory"):
        found.append(Finding(
            Severity.CRITICAL, "sqlite", f"sqlite journal_mode={journal}",
            "the whole database: a crash in the middle of a write can leave it corrupt, "
            "with no journal to roll back",
            "let salvador open the file in WAL mode (do not change journal_mode)",
        ))
    if mode == "off":
        found.append(Finding(
            Severity.CRITICAL, "sqlite", "sqlite synchronous=off",
            "the whole database: an OS crash or power loss can corrupt the file (SQLite does "
            "not wait for the disk at all), not only lose the last tasks",
            f"open it with ?synchronous=full (sqlite:///{path}?synchronous=full)",
        ))
    elif mode == "normal":
        found.append(Finding(
            Severity.WARNING, "sqlite", "sqlite synchronous=normal",
            "an OS crash or power loss may roll back the last transactions before it "
            "(submits that had returned, step checkpoints); a process crash loses nothing",
            f"open it with ?synchronous=full (sqlite:///{path}?synchronous=full), at the "
            "cost of an fsync per commit",
        ))
    fstype = filesystem_type(path)
    if fstype in NETWORK_FILESYSTEMS or (fstype or "").startswith(("nfs", "smb")):
        found.append(Finding(
            Severity.CRITICAL, "sqlite", f"sqlite database on a {fstype} filesystem",
            "the whole database: SQLite's locks and WAL shared memory do not work reliably "
            "over a network filesystem, so two processes can write at once and corrupt it",
            "keep the database on a local disk, or use redis:// for workers on several machines",
        ))
    elif fstype in MEMORY_FILESYSTEMS:
        found.append(Finding(
            Severity.CRITICAL, "sqlite", f"sqlite database on {fstype}",
            f"every task: {path} is held in RAM ({fstype}), so a reboot erases it",
            "put the database on a disk-backed filesystem (e.g. under /var/lib)",
        ))
    return found


def filesystem_type(path: str, mountinfo: str | None = None) -> str | None:
    """The filesystem type of the mount holding `path` (Linux /proc/self/mountinfo, or
    the given text in that format); None when it cannot be told."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                mountinfo = f.read()
        except OSError:
            return None
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount_point = _unescape(fields[4])
        fstype = line.split(" - ", 1)[1].split()[0]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        # The last of equally long matches wins: it was mounted over the others.
        if inside and (best is None or len(mount_point) >= best[0]):
            best = (len(mount_point), fstype)
    return None if best is None else best[1]


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


# -- Redis ----------------------------------------------------------------------------------


async def _redis_findings(backend: Any) -> list[Finding]:
    """Read persistence and eviction settings from the server the backend talks to."""
    where: str = backend.where
    if backend._mux is None:
        return [Finding(
            Severity.NOTE, "redis", "redis cluster",
            "not checked: persistence and eviction are set per node",
            "run `salvador check --url redis://<node>:<port>/0` against each primary",
        )]
    config, note = await _redis_config(backend)
    found = [] if note is None else [note]
    found.extend(_redis_persistence(config, where))
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        limit = config.get("maxmemory", "0")
        when = "when it reaches maxmemory" if limit not in ("", "0") else "once a maxmemory is set"
        found.append(Finding(
            Severity.CRITICAL, "redis", f"redis maxmemory-policy={policy}",
            f"task records and queue entries, without an error: {when} Redis at {where} "
            f"evicts keys to make room ({_EVICTION_PROBE})",
            "CONFIG SET maxmemory-policy noeviction (and set it in redis.conf): a full server "
            "then refuses new submits with an error instead of dropping stored tasks",
        ))
    return found


async def _redis_config(backend: Any) -> tuple[dict[str, str], Finding | None]:
    """appendonly, appendfsync, save, maxmemory and maxmemory-policy, from CONFIG GET, or
    from INFO when CONFIG is refused (ACL, renamed command, managed services)."""
    from redis import exceptions as rx

    mux = backend._mux
    names = ("appendonly", "appendfsync", "save", "maxmemory", "maxmemory-policy")
    try:
        try:
            reply = await mux.execute("CONFIG", "GET", *names)
        except rx.ResponseError as exc:
            info = _info_fields(await mux.execute("INFO", "persistence"))
            info.update(_info_fields(await mux.execute("INFO", "memory")))
            config = {
                "appendonly": "yes" if info.get("aof_enabled") == "1" else "no",
                "maxmemory": info.get("maxmemory", "0"),
                "maxmemory-policy": info.get("maxmemory_policy", "noeviction"),
            }
            return config, Finding(
                Severity.NOTE, "redis", "redis CONFIG GET refused",
                f"not checked: appendfsync and snapshot rules ({_text(exc)})",
                "allow the user +config|get, or check appendfsync in redis.conf by hand",
            )
    except rx.ResponseError as exc:
        return {}, Finding(
            Severity.NOTE, "redis", "redis CONFIG GET and INFO refused",
            f"not checked: persistence and eviction ({_text(exc)})",
            "allow the user +config|get or +info, or check redis.conf by hand",
        )
    except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
        raise backend._unavailable(exc) from exc
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
    return {_text(k): _text(v) for k, v in pairs}, None


def _redis_persistence(config: dict[str, str], where: str) -> list[Finding]:
    appendonly = config.get("appendonly")
    if appendonly is None:
        return []
    if appendonly != "yes":
        save = config.get("save")
        if save:
            loses = (f"every task submitted or advanced since the last RDB snapshot (save "
                     f"{save!r}): a crash or kill of Redis at {where} takes them with it")
        elif save is None:
            loses = (f"every task written since the last RDB snapshot, if any: Redis at {where} "
                     "has no append-only file")
        else:
            loses = f"every task: Redis at {where} keeps no append-only file and no snapshots"
        return [Finding(
            Severity.CRITICAL, "redis", "redis appendonly=no", loses,
            "CONFIG SET appendonly yes and CONFIG SET appendfsync always (or everysec), and "
            "put both in redis.conf",
        )]
    fsync = config.get("appendfsync")
    if fsync == "everysec":
        return [Finding(
            Severity.WARNING, "redis", "redis appendfsync=everysec",
            "about the last second of writes on an OS crash or power loss (a crash of Redis "
            "alone loses nothing)",
            "CONFIG SET appendfsync always for no loss at all, at the cost of an fsync per write",
        )]
    if fsync == "no":
        return [Finding(
            Severity.WARNING, "redis", "redis appendfsync=no",
            "the writes the OS had not flushed yet (up to ~30 s on Linux) on an OS crash or "
            "power loss",
            "CONFIG SET appendfsync always (or everysec: at most about a second)",
        )]
    return []


def _info_fields(reply: Any) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in _text(reply).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def blocking(found: Iterable[Finding], *, strict: bool = False) -> list[Finding]:
    """The findings that fail a preflight: critical ones, and with `strict` warnings too."""
    levels = {Severity.CRITICAL, Severity.WARNING} if strict else {Severity.CRITICAL}
    return [f for f in found if f.severity in levels]
