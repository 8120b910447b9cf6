"""examples/metrics_prometheus.py serves salvador's metrics to Prometheus as documented."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "metrics_prometheus.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
        return str(reply.read().decode())


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name` whose labels include `labels`, from Prometheus text format."""
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


def test_the_example_exposes_task_and_step_metrics() -> None:
    pytest.importorskip("opentelemetry.exporter.prometheus")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            try:
                text = scrape(port)
            except OSError:
                text = ""
            if value(text, "salvador_tasks_settled_total", salvador_status="completed") == 12:
                break
            time.sleep(0.2)
        workflow = {"salvador_workflow": "process-order"}
        settled = value(text, "salvador_tasks_settled_total", salvador_status="completed", **workflow)
        assert settled == 12, text
        # Orders 0, 3, 6 and 9 fail their first charge and are retried.
        assert value(text, "salvador_tasks_retried_total", salvador_step="charge", **workflow) == 4
        ok = {"salvador_step": "charge", "salvador_outcome": "ok"}
        assert value(text, "salvador_step_duration_seconds_count", **ok) == 12
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
