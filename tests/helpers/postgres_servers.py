"""PostgreSQL for the tests: the shared server, fresh schemas, and private servers.

`shared_postgres_url()` is the shared server ($SALVADOR_TEST_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/test) once it answers: unreachable means skip, or fail
with SALVADOR_REQUIRE_BACKENDS=1. Tests isolate themselves by schema (`unique_schema`,
dropped afterwards with `drop_schema`); the shared server is never stopped or reconfigured.

`PostgresServer` is a private server for fault tests: `initdb` in a temp dir, `postgres` on a
free loopback port (trust auth), stopped by PID. As root, initdb and postgres refuse to run,
so the server runs as the `postgres` user (the temp dir is handed to it). `private_standby`
starts a streaming hot standby of one (`pg_basebackup -R`), for replication tests.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

#: The shared server the non-fault tests use.
SHARED_URL = os.environ.get("SALVADOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

_LIVE: set[subprocess.Popen[bytes]] = set()


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("SALVADOR_REQUIRE_BACKENDS") == "1":
        pytest.fail(f"{reason} (SALVADOR_REQUIRE_BACKENDS=1 forbids skipping)")
    pytest.skip(reason)


def shared_postgres_url() -> str:
    """$SALVADOR_TEST_POSTGRES_URL once it answers; unreachable means skip (or fail)."""
    import asyncio

    import asyncpg

    async def ping() -> None:
        conn = await asyncpg.connect(SHARED_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(ping())
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
        _skip_or_fail(f"PostgreSQL at $SALVADOR_TEST_POSTGRES_URL ({SHARED_URL}) is unreachable: {exc}")
    return SHARED_URL


def unique_schema(prefix: str = "salvador_test_") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def with_options(url: str, **options: str) -> str:
    tail = "&".join(f"{k}={v}" for k, v in options.items())
    return url + ("&" if "?" in url else "?") + tail if tail else url


async def drop_schema(url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.split("?", 1)[0], timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


# -- private servers ----------------------------------------------------------------------


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def require_postgres_binaries() -> tuple[str, str, str]:
    """Paths of initdb, postgres and pg_ctl; skips (or fails) when missing."""
    found = (_binary("initdb"), _binary("postgres"), _binary("pg_ctl"))
    if None in found:
        _skip_or_fail("initdb/postgres/pg_ctl not found; install PostgreSQL to run the fault tests")
    return found  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        _skip_or_fail("running as root and no 'postgres' user to run a private server as")
        raise
    return entry.pw_uid, entry.pw_gid


class PostgresServer:
    """One private PostgreSQL server in `directory`, on a free port. `start()` again after
    `stop_immediate()` restarts it on the same data (crash recovery)."""

    def __init__(self, directory: Path, *, settings: tuple[str, ...] = ()) -> None:
        self.initdb, self.postgres, self.pg_ctl = require_postgres_binaries()
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.user = _as_server_user()

    def url(self, database: str = "postgres", **options: str) -> str:
        return with_options(f"postgresql://postgres@127.0.0.1:{self.port}/{database}", **options)

    def _demote(self) -> None:
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the tests
        if self.user is not None:
            os.setgid(self.user[1])
            os.setuid(self.user[0])

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            os.chown(self.directory, *self.user)
        subprocess.run(
            [self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"],
            check=True, capture_output=True, preexec_fn=self._demote_only, timeout=120,
        )

    def _demote_only(self) -> None:
        if self.user is not None:
            os.setgid(self.user[1])
            os.setuid(self.user[0])

    def base_backup(self, primary: PostgresServer) -> None:
        """Instead of `init()`: copy `primary`'s data directory with `pg_basebackup -R`, so
        that this server starts as its streaming hot standby."""
        basebackup = _binary("pg_basebackup")
        if basebackup is None:
            _skip_or_fail("pg_basebackup not found; install PostgreSQL to run the replication tests")
        assert basebackup is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            os.chown(self.directory, *self.user)
        subprocess.run(
            [basebackup, "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
             "-D", str(self.data), "-R", "-X", "stream", "-c", "fast", "--no-sync"],
            check=True, capture_output=True, preexec_fn=self._demote_only, timeout=120,
        )

    def start(self, timeout: float = 30.0) -> float:
        """Start the server and wait until it accepts connections; returns the seconds."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        began = time.monotonic()
        argv = [
            self.postgres, "-D", str(self.data), "-p", str(self.port), "-k", str(self.directory),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200",
            "-c", "shared_buffers=32MB",
        ]
        for setting in self.settings:
            argv += ["-c", setting]
        preexec = self._demote if threading.current_thread() is threading.main_thread() else self._demote_only
        log = open(self.directory / "postgres.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)
        log.close()
        _LIVE.add(self.proc)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres on port {self.port} exited: {self.log_tail()}")
            if self._accepts():
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"postgres on port {self.port} not ready: {self.log_tail()}")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        import asyncio

        import asyncpg

        async def ping() -> None:
            conn = await asyncpg.connect(self.url(), timeout=2)
            await conn.close()

        outcome: list[bool] = []

        def attempt() -> None:  # in a thread of its own: the caller may run an event loop
            try:
                asyncio.run(ping())
                outcome.append(True)
            except Exception:
                outcome.append(False)

        thread = threading.Thread(target=attempt)
        thread.start()
        thread.join()
        return outcome == [True]

    def stop_immediate(self) -> None:
        """`pg_ctl stop -m immediate`'s signal (SIGQUIT: no checkpoint, crash recovery at the
        next start), sent by PID, and wait for the process to go."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            _LIVE.discard(self.proc)

    def kill(self) -> None:
        """Stop for good: SIGQUIT, then SIGKILL by PID if it lingers."""
        self.stop_immediate()

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "postgres.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


atexit.register(_kill_leftovers)


@contextlib.contextmanager
def private_postgres(*settings: str):  # type: ignore[no-untyped-def]
    """A started private server, stopped by PID and removed afterwards, even on failure."""
    root = Path(tempfile.mkdtemp(prefix="salvador-pg-"))
    root.chmod(0o755)  # the server may run as the postgres user (see _as_server_user)
    server = PostgresServer(root / "pg", settings=settings)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def private_standby(primary: PostgresServer, *settings: str):  # type: ignore[no-untyped-def]
    """A started streaming hot standby of `primary`, stopped by PID and removed afterwards,
    even on failure."""
    root = Path(tempfile.mkdtemp(prefix="salvador-pg-standby-"))
    root.chmod(0o755)  # the server may run as the postgres user (see _as_server_user)
    server = PostgresServer(root / "pg", settings=settings)
    try:
        server.base_backup(primary)
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)
