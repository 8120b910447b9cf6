"""What the operator tools share: the `salvador` command (cli.py) and the web dashboard
(dashboard/) inspect tasks the same way, so both take it from here.

- `admin_engine`: an engine for producing and inspecting only (no observers, never runs
  steps), with the workflows an `--app MODULE:ATTR` names (`load_workflows`).
- `backend_location`: which backend an engine uses, for a message, passwords redacted.
- `stats`: per-workflow numbers, counted by the backend where it offers `TaskCounts`,
  else from the listing (`stats_from_listing`).
- `step_rows`: each step of a task as the task views show it.
- `parse_duration`: `90`, `30s`, `15m`, `2h`, `1d`, `2w` as seconds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from salvador_core.config import redact_url
from salvador_core.engine import Engine
from salvador_core.errors import ConfigurationError
from salvador_core.protocols import TaskCounts
from salvador_core.settings import load_object
from salvador_core.task import (
    StatsTally,
    Task,
    TaskStatus,
    WorkflowStats,
    dump_json,
    utcnow,
)
from salvador_core.workflow import Workflow

#: Tasks read per page when a whole listing is walked (`stats_from_listing`).
PAGE_SIZE = 500

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def workflows_of(target: Any, spec: str) -> list[Workflow]:
    """The workflows an `--app` or `worker` target names (`spec` is its MODULE:ATTR)."""
    if isinstance(target, Engine):
        return list(target.workflows.values())
    if isinstance(target, Workflow):
        return [target]
    if isinstance(target, (list, tuple)) and target and all(isinstance(w, Workflow) for w in target):
        return list(target)
    raise ConfigurationError(
        f"{spec} is a {type(target).__name__}; name an Engine, a Workflow or a list of workflows "
        "(for example myapp.tasks:engine)"
    )


def load_workflows(app: str | None) -> list[Workflow]:
    """The workflows of `app` ("MODULE:ATTR"), or none when it is None."""
    return workflows_of(load_object(app), app) if app else []


def admin_engine(url: str | None, workflows: list[Workflow]) -> Engine:
    """An engine for producing and inspecting only (it never runs steps), quiet (no
    observers): `Engine.from_url(url)`, so None means `$SALVADOR_URL`."""
    return Engine.from_url(url, workflows=workflows, observers=[])


def backend_location(engine: Engine) -> str:
    """The engine's backend for a message, password redacted."""
    settings = engine.settings
    if settings.url:
        return redact_url(settings.url)
    if settings.store_url and settings.queue_url:
        return f"{redact_url(settings.store_url)} + {redact_url(settings.queue_url)}"
    return repr(engine.backend)


def parse_duration(text: str) -> float:
    """Seconds from `90`, `30s`, `15m`, `2h`, `1d` or `2w`; ValueError saying what fits."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write seconds (90) or 30s, 30m, 12h, 7d, 2w")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a finite duration")
    return seconds


async def stats(engine: Engine, workflow: str | None) -> list[WorkflowStats]:
    """Per workflow (or only `workflow`): counts by status, queue depth, oldest wait, dead
    letters, completions per minute. Counted by the backend where it implements
    `TaskCounts`, else read from the listing."""
    backend = engine.backend
    if isinstance(backend, TaskCounts):
        found = await backend.stats()
        return [s for s in found if workflow is None or s.workflow == workflow]
    return await stats_from_listing(engine, workflow)


async def stats_from_listing(engine: Engine, workflow: str | None) -> list[WorkflowStats]:
    """Counted from the listing, page by page: reads every record, so it is slow on big
    stores."""
    tally = StatsTally(utcnow())
    cursor: str | None = None
    while True:
        page = await engine.list_tasks(workflow=workflow, limit=PAGE_SIZE, cursor=cursor)
        for task in page.tasks:
            tally.add(task)
        cursor = page.cursor
        if cursor is None:
            return tally.result()


@dataclass(frozen=True)
class StepRow:
    """One step of a task: its number (1 = the first), state, result size in bytes (None:
    no result saved) and, for the step in progress or failed, its attempts."""

    number: int
    name: str
    state: str
    result_bytes: int | None
    attempts: int | None


def step_rows(task: Task, wf: Workflow | None) -> list[StepRow]:
    """Each step the task has reached (every step of the workflow when it is known): its
    state, result size and, for the step in progress or failed, its attempts."""
    names = [s.name for s in wf.steps] if wf is not None else list(task.results)
    last = task.error or (task.failures[-1] if task.failures else None)
    current = last.step if last is not None else None
    if wf is None and current is not None and current not in names:
        names.append(current)
    rows = []
    for i, name in enumerate(names):
        result = task.results.get(name, _MISSING)
        size = None if result is _MISSING else len(dump_json(result, what="a step result"))
        if name in task.compensated:
            state = "compensated"
        elif i < task.step:
            state = "done"
        elif i == task.step and task.status is TaskStatus.RUNNING:
            state = "running"
        elif i == task.step and task.status in (TaskStatus.FAILED, TaskStatus.COMPENSATED,
                                                TaskStatus.COMPENSATING) and name == current:
            state = "failed"
        elif i == task.step and task.status is TaskStatus.CANCELLED:
            state = "cancelled"
        elif i == task.step and task.status is TaskStatus.PENDING and task.attempt:
            state = "retrying"
        else:
            state = "not run"
        attempts = task.attempt if i == task.step and task.attempt else None
        rows.append(StepRow(i + 1, name, state, size, attempts))
    return rows


_MISSING = object()
