"""One connection shared by every coroutine of a process: pipelining without asking for it.

redis-py sends one command per pooled connection and waits for its reply, which costs
60-80 µs of Python per command. Redis answers the commands of one connection strictly in
order, so a process can instead write every caller's command to a single connection as
soon as it is issued (concurrent callers' commands leave in one write) and hand the
replies back in order. That is about 10x cheaper per command and is what lets one worker
run thousands of tasks a second. Blocking commands (BLMOVE) must not use it: they would
hold up every reply behind them.

A connection that fails fails every command waiting on it with a `redis` ConnectionError;
the next command opens a new connection. A connection that stops answering (half-open
TCP, a stopped server) is noticed by a watchdog: no reply for `timeout` seconds while
commands wait fails them with a TimeoutError.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as rx
from redis.asyncio.connection import AbstractConnection

#: Failures after which a command is sent again on a new connection: the connection
#: broke, so the command may or may not have run. Every salvador script is safe to
#: repeat (see docs/backends/redis.md). Authentication failures are not retried, and
#: neither are timeouts: a server that stopped answering rarely answers a second ask
#: sooner, and the caller should hear of it after one timeout, not four.
_RETRYABLE = (rx.ConnectionError,)
_BROKEN = (rx.ConnectionError, rx.TimeoutError)
_BACKOFF = (0.05, 0.1, 0.2)


@dataclass
class _Link:
    """One live connection and the commands in flight on it."""

    conn: AbstractConnection
    waiting: deque[asyncio.Future[Any]] = field(default_factory=deque)
    out: list[bytes] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    progress: float = 0.0  # loop time of the last reply, or of the first command after a lull
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Multiplexer:
    """Runs commands over one shared connection made by `connect` (not yet connected)."""

    def __init__(self, connect: Callable[[], AbstractConnection], *, timeout: float) -> None:
        self._new_connection = connect
        self._timeout = timeout
        self._link: _Link | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    async def execute(self, *args: Any) -> Any:
        """Run one command; an error reply is raised (a `redis` ResponseError)."""
        for attempt in range(len(_BACKOFF) + 1):
            try:
                link = await self._connected()
                return await self._send(link, args)
            except rx.AuthenticationError:
                raise
            except _RETRYABLE:
                if attempt == len(_BACKOFF):
                    raise
                await asyncio.sleep(_BACKOFF[attempt])
        raise AssertionError("unreachable")

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Run `commands` back to back on the connection, in this order, nothing else in
        between. Returns their replies; an error reply is returned as the exception."""
        for attempt in range(len(_BACKOFF) + 1):
            try:
                link = await self._connected()
                futures = [self._send(link, args) for args in commands]
                replies = await asyncio.gather(*futures, return_exceptions=True)
                broken = next((r for r in replies if isinstance(r, _BROKEN)), None)
                if broken is not None:
                    raise broken
                return replies
            except rx.AuthenticationError:
                raise
            except _RETRYABLE:
                if attempt == len(_BACKOFF):
                    raise
                await asyncio.sleep(_BACKOFF[attempt])
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Fail anything in flight and close the connection."""
        link = self._link
        if link is not None:
            self._fail(link, rx.ConnectionError("the connection was closed by salvador"))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _connected(self) -> _Link:
        link = self._link
        if link is not None:
            return link
        async with self._lock:
            if self._link is None:
                conn = self._new_connection()
                # The handshake (AUTH, SELECT, HELLO) keeps the socket timeout; after it the
                # watchdog bounds waits instead, as a per-read timeout costs a timer each.
                await conn.connect()  # type: ignore[no-untyped-call]
                conn.socket_timeout = None
                link = _Link(conn, progress=asyncio.get_running_loop().time())
                link.tasks = [
                    asyncio.create_task(self._read(link)),
                    asyncio.create_task(self._write(link)),
                    asyncio.create_task(self._watch(link)),
                ]
                self._link = link
            return self._link

    def _send(self, link: _Link, args: Sequence[Any]) -> asyncio.Future[Any]:
        packed = pack(args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not link.waiting:
            link.progress = future.get_loop().time()
        link.waiting.append(future)
        link.out.append(packed)
        link.wake.set()
        return future

    async def _write(self, link: _Link) -> None:
        """Write whatever was issued since the last write, in one go."""
        try:
            while True:
                await link.wake.wait()
                link.wake.clear()
                out, link.out = link.out, []
                if out:
                    await link.conn.send_packed_command(out, check_health=False)
        except Exception as exc:
            self._fail(link, exc)

    async def _read(self, link: _Link) -> None:
        """Hand each reply to the oldest waiting command (Redis replies in order)."""
        loop = asyncio.get_running_loop()
        while True:
            reply: Any
            try:
                reply = await link.conn.read_response()  # no timeout: see _connected
            except rx.ResponseError as exc:
                reply = exc  # an error reply: the stream is intact
            except Exception as exc:
                self._fail(link, exc)
                return
            link.progress = loop.time()
            if not link.waiting:
                self._fail(link, rx.InvalidResponse("Redis sent a reply nobody asked for"))
                return
            future = link.waiting.popleft()
            if future.done():
                continue  # the caller gave up (cancelled); its reply is dropped
            if isinstance(reply, rx.ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _watch(self, link: _Link) -> None:
        """Fail the connection when commands wait longer than `timeout` for a reply."""
        loop = asyncio.get_running_loop()
        period = max(0.05, min(1.0, self._timeout / 4))
        while True:
            await asyncio.sleep(period)
            if link.waiting and loop.time() - link.progress > self._timeout:
                self._fail(link, rx.TimeoutError(
                    f"no reply from Redis within {self._timeout:g} s on the shared connection "
                    f"({len(link.waiting)} commands waiting)"
                ))
                return

    def _fail(self, link: _Link, exc: BaseException) -> None:
        if self._link is link:
            self._link = None
        waiting, link.waiting = link.waiting, deque()
        link.out = []
        problem = exc if isinstance(exc, _BROKEN) else rx.ConnectionError(str(exc) or type(exc).__name__)
        for future in waiting:
            if not future.done():
                future.set_exception(type(problem)(*problem.args))
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()
        closing = asyncio.create_task(self._disconnect(link))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _disconnect(self, link: _Link) -> None:
        with contextlib.suppress(Exception):
            await link.conn.disconnect(nowait=True)


def pack(args: Sequence[Any]) -> bytes:
    """One command in RESP. redis-py's own packer costs about 30 µs for a script call with
    a record in it (it splits and re-checks every argument); this is one join."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise rx.DataError(
                f"cannot send a {type(arg).__name__} to Redis; convert it to bytes, str, int or float"
            )
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
