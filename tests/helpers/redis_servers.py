"""Private `redis-server` processes for fault tests: free ports, tmp dirs, killed by PID.

Fault tests kill and restart servers, so they never touch the shared Redis on 6379. Each
`RedisServer` is one process on a free loopback port with its own working directory (its
AOF and cluster config live there, so a restart on the same port and directory finds its
data again). `RedisCluster` is three such processes joined into a 3-master cluster.

Test modules import the fixtures they use from here (`from tests.helpers.redis_servers import ...`): this
directory's conftest.py belongs to the Redis backend's own tests.

`redis-server` missing: the tests are skipped, unless `SALVADOR_REQUIRE_BACKENDS=1`, which
turns the skip into a failure (CI must not pass by skipping).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")

#: Every process started here, so an interrupted run still kills them on exit.
_LIVE: set[subprocess.Popen[bytes]] = set()


def require_redis_server() -> str:
    """The `redis-server` path; skips the test (fails with SALVADOR_REQUIRE_BACKENDS=1)."""
    if REDIS_SERVER and REDIS_CLI:
        return REDIS_SERVER
    reason = "redis-server/redis-cli not on PATH; install Redis >= 7 to run the Redis fault tests"
    if os.environ.get("SALVADOR_REQUIRE_BACKENDS") == "1":
        pytest.fail(f"{reason} (SALVADOR_REQUIRE_BACKENDS=1 forbids skipping)")
    pytest.skip(reason)


def free_port(*, with_bus: bool = False) -> int:
    """A loopback port nobody listens on now; `with_bus` also needs port+10000 free (the
    cluster bus port)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found for a cluster node")


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies, so no server outlives it."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def command(port: int, *args: str) -> bytes:
    """Send one command over a fresh socket and return the raw RESP reply (admin use:
    no client library involved, so it works while the server is half up)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"".join(parts))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        if reply.startswith(b"$"):
            size = int(reply[1 : reply.index(b"\r\n")])
            header = reply.index(b"\r\n") + 2
            while size >= 0 and len(reply) < header + size + 2:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        return reply


class RedisServer:
    """One private redis-server process. `kill()` is SIGKILL; `start()` after it restarts
    on the same port and directory (so AOF data survives when persistence is on)."""

    def __init__(self, directory: Path, *, port: int | None = None, args: tuple[str, ...] = (),
                 cluster: bool = False) -> None:
        self.binary = require_redis_server()
        self.directory = directory
        self.cluster = cluster
        self.port = port or free_port(with_bus=cluster)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def url(self, prefix: str | None = None, **options: str) -> str:
        query = dict(options)
        if prefix is not None:
            query["prefix"] = prefix
        tail = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        return f"redis://127.0.0.1:{self.port}/0" + (f"?{tail}" if tail else "")

    def start(self, timeout: float = 20.0) -> float:
        """Start (or restart) the process and wait until it answers PING (it answers
        LOADING while it replays its AOF). Returns the seconds that took."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--logfile", "redis.log",
            "--daemonize", "no", "--protected-mode", "no", "--save", "",
        ]
        if self.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "5000"]
        argv += list(self.args)
        began = time.monotonic()
        preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=preexec
        )
        _LIVE.add(self.proc)
        self.starts += 1
        deadline = began + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with {self.proc.returncode}: "
                    f"{self.log_tail()}"
                )
            try:
                if command(self.port, "PING").startswith(b"+PONG"):
                    return time.monotonic() - began
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} not ready: {self.log_tail()}")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL by PID and reap: no shutdown, no final AOF flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
            _LIVE.discard(self.proc)

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "redis.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def cli(self, *args: str) -> str:
        """Run `redis-cli -p PORT args...` and return its output (raises on failure)."""
        assert REDIS_CLI is not None
        out = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), *args], capture_output=True, check=True, timeout=60
        )
        return out.stdout.decode()


class RedisCluster:
    """Three cluster-enabled RedisServers joined as masters with no replicas."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.nodes = [RedisServer(directory / f"node{i}", cluster=True) for i in range(masters)]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def url(self, prefix: str | None = None, **options: str) -> str:
        return self.nodes[0].url(prefix, cluster="true", **options)

    def start(self, timeout: float = 30.0) -> float:
        began = time.monotonic()
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{p}" for p in self.ports]
        self.nodes[0].cli("--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes")
        deadline = began + timeout
        while not all(b"cluster_state:ok" in command(p, "CLUSTER", "INFO") for p in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster on {self.ports} did not reach cluster_state:ok")
            time.sleep(0.05)
        return time.monotonic() - began

    def keyslot(self, key: str) -> int:
        reply = command(self.ports[0], "CLUSTER", "KEYSLOT", key)
        return int(reply[1:].strip())

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


atexit.register(_kill_leftovers)


def _tmp_root(name: str) -> Path:
    # Short paths: cluster nodes write nodes.conf there, and unix paths stay readable in logs.
    return Path(tempfile.mkdtemp(prefix=f"salvador-{name}-"))


class ServerFactory:
    """Starts private servers for one test and kills every one of them afterwards."""

    def __init__(self) -> None:
        self.root = _tmp_root("redis")
        self.servers: list[RedisServer] = []

    def __call__(self, *args: str) -> RedisServer:
        server = RedisServer(self.root / f"s{len(self.servers)}", args=args)
        server.start()
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in self.servers:
            server.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def redis_server_factory() -> Iterator[ServerFactory]:
    """`factory(*redis_args) -> RedisServer`, started; all killed and removed after the test."""
    require_redis_server()
    factory = ServerFactory()
    try:
        yield factory
    finally:
        factory.close()


_CLUSTER: RedisCluster | None = None


@pytest.fixture(scope="session")
def redis_cluster(request: pytest.FixtureRequest) -> RedisCluster:
    """One private 3-master cluster for the whole session (shared by every module that
    imports this fixture; tests isolate themselves by prefix). Killed at session end."""
    global _CLUSTER
    require_redis_server()
    if _CLUSTER is None:
        root = _tmp_root("cluster")
        cluster = RedisCluster(root)
        try:
            cluster.start()
        except BaseException:
            cluster.kill()
            shutil.rmtree(root, ignore_errors=True)
            raise
        _CLUSTER = cluster

        def stop() -> None:
            global _CLUSTER
            cluster.kill()
            shutil.rmtree(root, ignore_errors=True)
            _CLUSTER = None

        request.session.config.add_cleanup(stop)
    return _CLUSTER


def unique(prefix: str = "t") -> str:
    """A fresh tenant prefix for one test."""
    return f"{prefix}{uuid.uuid4().hex[:10]}:"


#: The shared server the non-fault tests use (never stopped or reconfigured by a test).
SHARED_URL = os.environ.get("SALVADOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def shared_redis_url() -> str:
    """$SALVADOR_TEST_REDIS_URL (redis://127.0.0.1:6379/0 by default) once it answers;
    unreachable means skip, or fail with SALVADOR_REQUIRE_BACKENDS=1."""
    import redis

    try:
        client = redis.Redis.from_url(SHARED_URL, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        reason = f"Redis at $SALVADOR_TEST_REDIS_URL ({SHARED_URL}) is unreachable: {exc}"
        if os.environ.get("SALVADOR_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"{reason} (SALVADOR_REQUIRE_BACKENDS=1 forbids skipping)")
        pytest.skip(reason)
    return SHARED_URL


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under a test's tenant `prefix`."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


@contextlib.contextmanager
def sqlite_or_redis_url(kind: str, directory: Path, name: str) -> Iterator[str]:
    """A fresh store for one test: "sqlite", a file `<name>.db` in `directory`; "redis", a
    key prefix of its own on the shared server, deleted afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / f'{name}.db'}"
        return
    server = shared_redis_url()
    prefix = unique(f"salvador-{name}-")
    try:
        yield f"{server}?prefix={prefix}"
    finally:
        delete_prefix(server, prefix)
