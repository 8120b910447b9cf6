"""Schema versions and migrations: the SQL files in `salvador_postgres/migrations/`.

Each file `NNNN_name.sql` is one migration, applied in number order, all in one
transaction with the row that records it in `<schema>.schema_migrations`. `__SCHEMA__` in a
file stands for the quoted schema name. Concurrent migrations of one schema (two processes
starting at once) take turns on a transaction-level advisory lock, so each file runs once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from salvador_core.errors import ConfigurationError
from salvador_postgres.settings import quote_ident


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def _load() -> tuple[Migration, ...]:
    folder = resources.files("salvador_postgres") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        numbers = [m.version for m in found]
        raise RuntimeError(f"salvador_postgres migrations are not numbered 1..n: {numbers}")
    return tuple(found)


MIGRATIONS = _load()

#: The schema version this code reads and writes.
SCHEMA_VERSION = MIGRATIONS[-1].version


def lock_key(schema: str) -> int:
    """The advisory-lock key of `schema`'s migrations (a signed 64-bit int)."""
    digest = hashlib.sha1(f"salvador-migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def current_version(conn: Any, schema: str) -> int:
    """The version `schema` is at: 0 when it has no salvador tables yet."""
    table = f"{quote_ident(schema)}.schema_migrations"
    if await conn.fetchval("SELECT to_regclass($1)", table) is None:
        return 0
    return int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {table}"))


def newer_schema_error(where: str, schema: str, found: int) -> ConfigurationError:
    return ConfigurationError(
        f"the salvador schema {schema!r} at {where} is at version {found}, newer than this "
        f"salvador understands ({SCHEMA_VERSION}): a newer salvador migrated it. Upgrade "
        "salvador-workflows on this machine; never run an older one against it."
    )


def older_schema_error(where: str, schema: str, found: int) -> ConfigurationError:
    what = "does not exist yet" if found == 0 else f"is at version {found}"
    return ConfigurationError(
        f"the salvador schema {schema!r} at {where} {what}; this salvador needs version "
        f"{SCHEMA_VERSION}. Run the migrations first: `await backend.migrate()`, or open "
        "once with ?migrate=true (as a role allowed to create tables in that schema)."
    )


async def migrate(conn: Any, schema: str, where: str, target: int = SCHEMA_VERSION) -> list[int]:
    """Bring `schema` up to `target` on `conn` (creating it if needed), in one transaction
    under the schema's advisory lock; returns the versions applied (empty when up to date).

    Raises `ConfigurationError` when the schema is newer than this code."""
    quoted = quote_ident(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(schema))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        found = await current_version(conn, schema)
        if found > SCHEMA_VERSION:
            raise newer_schema_error(where, schema, found)
        applied = []
        for migration in MIGRATIONS[found:target]:
            await conn.execute(migration.sql.replace("__SCHEMA__", quoted))
            await conn.execute(
                f"INSERT INTO {quoted}.schema_migrations (version, name) VALUES ($1, $2)",
                migration.version, migration.name,
            )
            applied.append(migration.version)
        return applied
