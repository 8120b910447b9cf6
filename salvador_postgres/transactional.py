"""The caller's connection for `submit_in` (the outbox pattern), whatever holds it.

`submit_in` writes through the asyncpg connection under the caller's object, in the
transaction the caller has open there, so the task commits or rolls back with the caller's
own rows. Accepted: an asyncpg `Connection` (or a pool's connection proxy), a SQLAlchemy 2
`AsyncConnection` or `AsyncSession` on the asyncpg dialect. SQLAlchemy is never imported
here: its objects are recognised by their module and reached through the driver
connection API (`get_raw_connection()` -> `.driver_connection`).
"""

from __future__ import annotations

from typing import Any

import asyncpg  # type: ignore[import-untyped]


async def driver_connection(connection: Any) -> Any:
    """The asyncpg connection behind `connection`, with the caller's transaction begun on
    it when SQLAlchemy has begun one lazily. Raises `TypeError` for anything else."""
    if isinstance(connection, (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy)):
        return connection
    module = type(connection).__module__ or ""
    if module.startswith("sqlalchemy."):
        return await _from_sqlalchemy(connection)
    raise TypeError(
        f"submit_in() needs an asyncpg connection, a SQLAlchemy AsyncConnection or an "
        f"AsyncSession (asyncpg dialect), not {type(connection).__module__}.{type(connection).__qualname__}"
    )


async def _from_sqlalchemy(connection: Any) -> Any:
    name = type(connection).__name__
    if name == "AsyncSession":
        connection = await connection.connection()  # begins the session's transaction
    elif name != "AsyncConnection":
        raise TypeError(
            f"submit_in() takes a SQLAlchemy AsyncConnection or AsyncSession, not {name}; "
            "for a sync Session or Connection use the async API (sqlalchemy.ext.asyncio)."
        )
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if not isinstance(driver, (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy)):
        raise TypeError(
            f"submit_in() needs SQLAlchemy on the asyncpg driver (postgresql+asyncpg://), not "
            f"{type(driver).__module__}.{type(driver).__qualname__}"
        )
    if connection.in_transaction() and not driver.is_in_transaction():
        # SQLAlchemy's asyncpg adapter starts the database transaction at the first
        # statement it sends; without one, our INSERT would commit on its own at once.
        await connection.exec_driver_sql("SELECT 1")
    return driver
