"""What a crash or a failover would lose with a PostgreSQL server as it is configured now.

`postgres_findings` reads, through the backend's own pool (so a value set for salvador's role
or database, or on its connections, is the one seen), the settings a commit's survival
depends on, and turns each risky value into a `Finding` (salvador_core/durability.py):

- `fsync=off`, `full_page_writes=off`: an OS crash or power loss can corrupt the whole
  cluster, not only lose the last commits (CRITICAL, as SQLite's `synchronous=off`);
- `synchronous_commit=off`: a crash of PostgreSQL itself loses the commits of the last
  3 x `wal_writer_delay` (CRITICAL: no OS crash needed; measured below);
- standbys attached (`pg_stat_replication`) that commits do not wait for (none named in
  `synchronous_standby_names`, or `synchronous_commit` `local` or `remote_write`): a failover
  loses what they had not received or flushed (WARNING).

Two queries. A setting the role may not read (a revoked `pg_settings`, a hidden value)
becomes a `NOTE`, never an exception.
"""

from __future__ import annotations

from typing import Any, Protocol

import asyncpg  # type: ignore[import-untyped]

from salvador_core.durability import Finding, Severity
from salvador_postgres.settings import quote_ident

__all__ = ["postgres_findings"]

#: The settings read, in the order findings are reported.
SETTINGS = (
    "fsync", "full_page_writes", "synchronous_commit", "wal_writer_delay", "synchronous_standby_names",
)
_SETTINGS_SQL = (
    "SELECT name, setting, unit, source, current_user AS role, current_database() AS db "
    "FROM pg_catalog.pg_settings WHERE name = ANY($1::text[])"
)
_STANDBYS_SQL = "SELECT count(*) FROM pg_catalog.pg_stat_replication"
#: What a private server with `synchronous_commit=off` and `wal_writer_delay=10s` lost when
#: stopped like a crash (SIGQUIT, `pg_ctl stop -m immediate`) right after 200 inserts.
_ASYNC_COMMIT_PROBE = ("a server with wal_writer_delay=10s, stopped like a crash right after 200 "
                       "commits, had lost the last 31")
#: Errors meaning "this role may not read that": a NOTE, not a failure.
_REFUSED = (asyncpg.exceptions.InsufficientPrivilegeError,)


class Reader(Protocol):
    """What the reader needs of the backend's pool."""

    async def fetch(self, sql: str, *args: Any) -> Any: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...


async def postgres_findings(db: Reader, where: str) -> list[Finding]:
    """The findings for the server behind `db` (the backend's pool); `where`: its redacted URL.

    Driver errors other than a refused privilege pass through (the backend maps them)."""
    try:
        rows = await db.fetch(_SETTINGS_SQL, list(SETTINGS))
    except _REFUSED as exc:
        return [_unreadable(", ".join(SETTINGS), str(exc))]
    settings = {row["name"]: _Setting(row) for row in rows}
    found: list[Finding] = []
    missing = [name for name in SETTINGS if name not in settings]
    if missing:
        found.append(_unreadable(", ".join(missing), "pg_settings does not show them to this role"))
    for name in ("fsync", "full_page_writes"):
        setting = settings.get(name)
        if setting is not None and setting.value == "off":
            found.append(_corrupting(setting))
    commit = settings.get("synchronous_commit")
    if commit is not None and commit.value == "off":
        found.append(_async_commit(commit, settings.get("wal_writer_delay")))
    try:
        standbys = int(await db.fetchval(_STANDBYS_SQL))
    except _REFUSED as exc:
        found.append(_unreadable("pg_stat_replication (standbys)", str(exc)))
        return found
    replication = _replication(standbys, commit, settings.get("synchronous_standby_names"))
    return [*found, *replication]


class _Setting:
    """One row of pg_settings, with who and where it was read as (for the fix)."""

    def __init__(self, row: Any) -> None:
        self.name: str = row["name"]
        self.value: str = row["setting"]
        self.unit: str | None = row["unit"]
        self.source: str = row["source"]
        self.role: str = row["role"]
        self.db: str = row["db"]


def _unreadable(names: str, why: str) -> Finding:
    return Finding(
        Severity.NOTE, "postgres", f"postgresql settings unreadable: {names}",
        f"not checked: {names} ({why})",
        "GRANT pg_read_all_settings (and pg_read_all_stats) to salvador's role, or check "
        "postgresql.conf by hand",
    )


def _corrupting(setting: _Setting) -> Finding:
    if setting.name == "fsync":
        loses = ("the whole cluster, not only the last commits: PostgreSQL does not wait for the "
                 "disk, so an OS crash or power loss can leave its files corrupt (a crash of "
                 "PostgreSQL alone loses nothing)")
    else:
        loses = ("the whole cluster: an OS crash or power loss in the middle of a page write "
                 "leaves a torn page that WAL replay cannot repair (safe only on a filesystem "
                 "that never tears pages, such as ZFS)")
    return Finding(
        Severity.CRITICAL, "postgres", f"postgresql {setting.name}=off", loses,
        _fix(setting, "on"),
    )


def _async_commit(commit: _Setting, delay: _Setting | None) -> Finding:
    window = "3 x wal_writer_delay"
    if delay is not None:
        window += f" = {_milliseconds(delay) * 3:g} ms here"
    return Finding(
        Severity.CRITICAL, "postgres", "postgresql synchronous_commit=off",
        f"the commits acknowledged in the last {window} before a crash of PostgreSQL (no OS crash "
        "needed) or of its machine: submits whose producer was told the task is stored, "
        f"checkpoints (those steps run again). Probe: {_ASYNC_COMMIT_PROBE}",
        _fix(commit, "on"),
    )


def _replication(standbys: int, commit: _Setting | None, names: _Setting | None) -> list[Finding]:
    """What a failover to one of the attached standbys would lose."""
    if standbys == 0 or commit is None or names is None:
        return []
    attached = f"{standbys} standby(s) attached"
    if not names.value.strip():
        return [Finding(
            Severity.WARNING, "postgres", "postgresql asynchronous replication",
            f"on a failover, the commits the new primary had not received yet ({attached}, none "
            "named in synchronous_standby_names, so commits never wait for them)",
            "name them in synchronous_standby_names (e.g. 'ANY 1 (*)') with synchronous_commit "
            "on or remote_apply, or let your failover manager promote only a synchronous standby",
        )]
    if commit.value == "local":
        return [Finding(
            Severity.WARNING, "postgres", "postgresql synchronous_commit=local",
            f"on a failover, the commits the standby had not received yet ({attached}: this role's "
            "commits do not wait for the synchronous standby)",
            _fix(commit, "on"),
        )]
    if commit.value == "remote_write":
        return [Finding(
            Severity.WARNING, "postgres", "postgresql synchronous_commit=remote_write",
            "on a failover after an OS crash or power loss of the standby, the commits it had "
            "written but not flushed to its disk",
            _fix(commit, "on"),
        )]
    return []


def _milliseconds(setting: _Setting) -> float:
    scale = {"ms": 1.0, "s": 1000.0, "min": 60_000.0}.get(setting.unit or "ms", 1.0)
    return float(setting.value) * scale


def _fix(setting: _Setting, good: str) -> str:
    """How to set `setting` to `good` where it was set (pg_settings.source says where)."""
    name, role, db = setting.name, quote_ident(setting.role), quote_ident(setting.db)
    if setting.source == "user":
        return f"ALTER ROLE {role} RESET {name} (it is set for salvador's role)"
    if setting.source == "database":
        return f"ALTER DATABASE {db} RESET {name} (it is set for this database)"
    if setting.source == "database user":
        return f"ALTER ROLE {role} IN DATABASE {db} RESET {name}"
    if setting.source == "client":
        return f"remove {name} from the connection's options (PGOPTIONS, server_settings)"
    if setting.source == "command line":
        return f"remove -c {name}={setting.value} from the server's command line and restart it"
    return f"ALTER SYSTEM SET {name} = {good} (or set it in postgresql.conf), then SELECT pg_reload_conf()"
