"""How the CLI tests call `salvador` and drive tasks to an end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from click.testing import CliRunner, Result

from salvador_core import Engine
from salvador_core.cli import cli
from tests.cli import app

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def invoke(*args: str, stdin: str | None = None, env: dict[str, str | None] | None = None) -> Result:
    """`salvador ARGS` in this process, through click's CliRunner; stderr kept apart."""
    base: dict[str, str | None] = {"SALVADOR_URL": None, "SALVADOR_APP": None,
                                   "SALVADOR_STORE_URL": None, "SALVADOR_QUEUE_URL": None}
    return CliRunner().invoke(cli, list(args), input=stdin, env={**base, **(env or {})})


def ok_json(*args: str, stdin: str | None = None) -> Any:
    """Run a command with --json, assert it succeeded, and return the parsed document."""
    result = invoke(*args, "--json", stdin=stdin)
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


def assert_one_line_error(result: Result | subprocess.CompletedProcess[str], status: int) -> str:
    """The command failed with `status` and said why in exactly one stderr line."""
    code = result.exit_code if isinstance(result, Result) else result.returncode
    stderr = result.stderr
    assert code == status, (code, result.stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("salvador: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def subprocess_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m salvador_core ARGS` as a real process, from the repository root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALVADOR_")}
    return subprocess.run(
        [sys.executable, "-m", "salvador_core", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=timeout,
    )


def run_until_finished(url: str, task_ids: list[str], timeout: float = 15.0) -> None:
    """Run the test workflows in this process until every task in `task_ids` is finished."""

    async def go() -> None:
        engine = Engine.from_url(url, workflows=app.workflows, poll_interval=0.05, observers=[])
        async with engine:
            worker = asyncio.create_task(engine.run(handle_signals=False))
            deadline = time.monotonic() + timeout
            try:
                for task_id in task_ids:
                    while True:
                        task = await engine.get_task(task_id)
                        if task is not None and task.status.terminal:
                            break
                        assert time.monotonic() < deadline, f"task {task_id} not finished: {task}"
                        await asyncio.sleep(0.02)
            finally:
                engine.stop()
                await worker

    asyncio.run(go())
