"""`python -m salvador_core` as a real process: the worker runs tasks and drains on SIGTERM,
and bad arguments or an unreachable server end in one stderr line and a non-zero exit."""

from __future__ import annotations

import asyncio
import importlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from salvador_core import Engine
from tests.cli import app
from tests.cli.support import ROOT, assert_one_line_error, invoke, subprocess_cli
from tests.helpers.redis_servers import free_port


def start_worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "salvador_core", "worker", *args, "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Signal the worker and return its exit status and stderr; SIGKILL if it hangs."""
    try:
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=15)
        return proc.returncode, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def submit_and_wait(url: str, bodies: list[dict[str, int]], timeout: float = 20.0) -> list[dict[str, int]]:
    """Submit `cli-ok` tasks (producer only) and return their last results once completed."""

    async def go() -> list[dict[str, int]]:
        async with Engine.from_url(url, workflows=app.workflows, observers=[]) as engine:
            ids = [await engine.submit("cli-ok", body) for body in bodies]
            deadline = time.monotonic() + timeout
            results = []
            for task_id in ids:
                while (task := await engine.get_task(task_id)) is None or not task.status.terminal:
                    assert time.monotonic() < deadline, f"worker did not finish {task}"
                    await asyncio.sleep(0.05)
                assert task.status.value == "completed", task
                results.append(task.results["second"])
            return results

    return asyncio.run(go())


def test_worker_runs_a_list_of_workflows_and_drains_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'worker.db'}"
    proc = start_worker("tests.cli.app:workflows", "--url", url, "--concurrency", "4")
    try:
        assert submit_and_wait(url, [{"n": 1}, {"n": 2}, {"n": 3}]) == [
            {"doubled": 2}, {"doubled": 4}, {"doubled": 6},
        ]
    finally:
        status, stderr = stop(proc)
    assert status == 0, stderr
    assert "running cli-fail, cli-ok" in stderr
    assert "concurrency 4" in stderr
    assert "drained and stopped" in stderr


def test_worker_given_an_engine_and_a_url_runs_its_workflows_on_that_url(tmp_path: Path) -> None:
    # tests.cli.app:engine is built on memory://; run as it is, it would never see these tasks.
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    proc = start_worker("tests.cli.app:engine", "--url", url)
    try:
        assert submit_and_wait(url, [{"n": 21}]) == [{"doubled": 42}]
    finally:
        status, stderr = stop(proc, signal.SIGINT)  # Ctrl-C drains the same way
    assert status == 0, stderr


def test_worker_runs_the_readme_example(tmp_path: Path) -> None:
    example = importlib.import_module("examples.process_order")
    if not hasattr(example, "engine"):
        pytest.skip("examples/process_order.py has no module-level `engine` yet (see docs/operations.md)")
    proc = subprocess.Popen(
        [sys.executable, "-m", "salvador_core", "worker", "examples.process_order:engine",
         "--url", "sqlite:///orders.db"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
    )
    url = f"sqlite:///{tmp_path / 'orders.db'}"

    async def go() -> str:
        async with Engine.from_url(url, workflows=[example.engine.workflows["process-order"]]) as producer:
            task_id = await producer.submit("process-order", {"order_id": "A-7", "amount": 3.5})
            deadline = time.monotonic() + 20
            while (task := await producer.get_task(task_id)) is None or not task.status.terminal:
                assert time.monotonic() < deadline, task
                await asyncio.sleep(0.05)
            return task.status.value

    try:
        assert asyncio.run(go()) == "completed"
    finally:
        status, stderr = stop(proc)
    assert status == 0, stderr


@pytest.mark.parametrize(("args", "status", "says"), [
    (("worker", "tests.cli.app:not_a_workflow", "--url", "memory://"), 2, "is a int"),
    (("worker", "tests.cli.app", "--url", "memory://"), 2, "MODULE:ATTRIBUTE"),
    (("worker", "tests.cli.nowhere:engine", "--url", "memory://"), 2, "cannot import module"),
    (("worker", "tests.cli.app:workflows", "--concurrency", "0", "--url", "memory://"), 2, "--concurrency"),
    (("list", "--url", "mysql://db/tasks"), 2, "no salvador backend handles the mysql:// scheme"),
    (("list", "--url", "sqlite:///x.db?synchronous=sometimes"), 2, "synchronous"),
    (("list", "--status", "lost", "--url", "memory://"), 2, "--status"),
    (("show", "--url", "memory://"), 2, "Missing argument"),
    (("purge", "--older-than", "soon", "--url", "memory://"), 2, "not a duration"),
    (("submit", "cli-ok", "--body", "{nope", "--url", "memory://"), 2, "not valid JSON"),
    (("submit", "cli-ok", "--body", "@/nonexistent/body.json", "--url", "memory://"), 2, "cannot read"),
    (("submit", "cli-ok", "--delay", "-5", "--url", "memory://"), 2, "not a duration"),
    (("submit", "cli-nope", "--app", "tests.cli.app:workflows", "--url", "memory://"), 2, "not registered"),
    (("list",), 2, "pass --url"),
    (("frobnicate",), 2, "No such command"),
])
def test_a_mistake_is_one_line_and_a_usage_status(args: tuple[str, ...], status: int, says: str) -> None:
    line = assert_one_line_error(subprocess_cli(*args), status)
    assert says in line


def test_an_unreachable_server_is_one_line_and_status_3() -> None:
    url = f"redis://app:hunter2-secret@127.0.0.1:{free_port()}/0"
    for args in (("list", "--url", url), ("check", "--url", url),
                 ("worker", "tests.cli.app:workflows", "--url", url)):
        line = assert_one_line_error(subprocess_cli(*args), 3)
        assert "unavailable" in line
        assert "hunter2-secret" not in line
        assert "app:***@" in line


def test_a_missing_task_is_status_4_and_help_is_status_0() -> None:
    assert_one_line_error(invoke("show", "f" * 32, "--url", "memory://"), 4)
    result = invoke("--help")
    assert result.exit_code == 0
    assert "dead-letters" in result.stdout
