"""Waking idle claimers: one LISTEN connection per backend object, and a fallback.

Writers that make a task claimable (submit, enqueue, release, requeue) send
`pg_notify(<schema channel>, <workflow>)` in the same statement or transaction, so the
notification is delivered when, and only if, the write commits. The `Listener` holds one
connection that LISTENs on the schema's channel and sets the wake-up event of the named
workflow (an empty payload wakes every workflow).

When that connection is lost (server restart, `pg_terminate_backend`, a network cut the
server noticed) the listener says so once in the log, claimers poll every `poll_interval`
seconds instead, and a background task reconnects with a growing pause (up to
`_MAX_PAUSE`); once it is back it says so, and wakes every claimer, since notifications sent
while it was away are lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from salvador_postgres.settings import Settings

log = logging.getLogger("salvador.postgres")

_FIRST_PAUSE = 0.1
_MAX_PAUSE = 5.0


class Listener:
    """The LISTEN connection of one backend object. `wake(workflow | None)` is called for
    each notification (None: wake all)."""

    def __init__(self, settings: Settings, wake: Callable[[str | None], None]) -> None:
        self._settings = settings
        self._wake = wake
        self._conn: Any = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False
        self.losses = 0  # how often the connection was lost (for tests and figures)

    @property
    def listening(self) -> bool:
        """True while notifications arrive; False means claimers must poll."""
        return self._conn is not None and not self._conn.is_closed()

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the LISTEN connection (None while it is down)."""
        return int(self._conn.get_server_pid()) if self.listening else None

    async def start(self) -> None:
        """Connect and LISTEN. On failure the listener is down: it logs that once, claimers
        poll, and it keeps trying in the background."""
        self._closed = False
        if self.listening or self._reconnecting is not None:
            return
        try:
            await self._connect()
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._lost(exc)

    async def close(self) -> None:
        self._closed = True
        task, self._reconnecting = self._reconnecting, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    async def _connect(self) -> None:
        conn = await asyncpg.connect(**self._settings.connect_kwargs())
        try:
            await conn.add_listener(self._settings.channel, self._notified)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._terminated)
        self._conn = conn

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._wake(payload or None)

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn and not self._closed:
            self._lost(None)

    def _lost(self, exc: BaseException | None) -> None:
        """Note the loss once, then reconnect in the background."""
        self._conn = None
        self.losses += 1
        if self._reconnecting is None and not self._closed:
            cause = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
            log.warning(
                "PostgreSQL at %s: the LISTEN connection is lost%s; idle workers poll every "
                "%.3g s until it is back", self._settings.where, cause, self._settings.poll_interval,
            )
            self._wake(None)  # claimers now waiting on notifications switch to polling
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        pause = _FIRST_PAUSE
        while not self._closed:
            await asyncio.sleep(pause)
            try:
                await self._connect()
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pause = min(pause * 2, _MAX_PAUSE)
                continue
            self._reconnecting = None
            log.info(
                "PostgreSQL at %s: the LISTEN connection is back; idle workers wait for "
                "notifications again", self._settings.where,
            )
            self._wake(None)  # notifications sent while it was down are lost: look again
            return
