"""Real dashboard servers for the tests: `salvador dashboard` (or uvicorn on an app that
mounts the dashboard) in a child process on a free loopback port, stopped by PID even when
the test fails."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.redis_servers import free_port

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.dashboard.app:workflows"


@dataclass
class Server:
    """One server process; `url` is where the dashboard answers."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Servers:
    """Starts servers for one test and stops every one of them afterwards."""

    workdir: Path
    started: list[Server] = field(default_factory=list)

    def dashboard(self, backend_url: str, *args: str, app: str | None = APP) -> Server:
        """`salvador dashboard --url backend_url [--app APP] args...` on a free port."""
        port = free_port()
        command = [sys.executable, "-m", "salvador_core", "dashboard", "--url", backend_url,
                   "--port", str(port), *(["--app", app] if app else []), *args]
        return self._start(command, port, "")

    def mounted(self, backend_url: str, prefix: str) -> Server:
        """uvicorn serving tests.dashboard.mounted:app, which mounts the dashboard at `prefix`."""
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", "tests.dashboard.mounted:app", "--port", str(port),
                   "--log-level", "warning"]
        env = {"DASHBOARD_TEST_URL": backend_url, "DASHBOARD_TEST_PREFIX": prefix}
        return self._start(command, port, prefix, env)

    def _start(self, command: list[str], port: int, path: str, env: dict[str, str] | None = None) -> Server:
        log = self.workdir / f"server-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, **(env or {})})
        server = Server(process, f"http://127.0.0.1:{port}{path}", log)
        self.started.append(server)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}: {server.output()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server
            time.sleep(0.05)
        raise AssertionError(f"server did not listen on {port} within 20 s: {server.output()}")

    def stop(self) -> None:
        for server in self.started:
            if server.process.poll() is None:
                server.process.terminate()
                try:
                    server.process.wait(5)
                except subprocess.TimeoutExpired:
                    server.process.kill()
                    server.process.wait(5)
