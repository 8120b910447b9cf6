"""What each dashboard page shows, as plain data: built from the engine's records, free of
HTTP, so the HTML pages and their JSON twins say exactly the same thing.

Bodies and step results are operator data that may be personal or secret: unless the
dashboard runs with `show_payloads`, only their sizes leave this module. Shown, each is
pretty-printed and cut at `PREVIEW_CHARS`, so one huge result cannot make a page huge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar
from urllib.parse import quote

from salvador_core import admin
from salvador_core.engine import Engine
from salvador_core.task import DEAD_LETTER_STATUSES, Task, TaskError, TaskStatus, dump_json, utcnow
from salvador_core.workflow import Workflow

#: Characters of a body or step result a page shows before cutting it.
PREVIEW_CHARS = 4000

#: W3C trace context: version-traceid-parentid-flags.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclass(frozen=True)
class Payload:
    """A body or step result as a page may show it: always its size; its text only when
    payloads are shown (`text` None otherwise), cut at PREVIEW_CHARS (`truncated`)."""

    size: int
    text: str | None
    truncated: bool


def payload_of(value: Any, *, show: bool, raw: bytes | None = None) -> Payload:
    """`value` (a step result) or `raw` (a body's bytes) for display."""
    data = raw if raw is not None else dump_json(value, what="a step result")
    if not show:
        return Payload(len(data), None, False)
    if raw is not None:
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            text = raw.decode("utf-8", "replace")
            return Payload(len(data), text[:PREVIEW_CHARS], len(text) > PREVIEW_CHARS)
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return Payload(len(data), text[:PREVIEW_CHARS], len(text) > PREVIEW_CHARS)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def ago(moment: datetime) -> str:
    return span((utcnow() - moment).total_seconds()) + " ago"


def span(seconds: float | None) -> str:
    """A duration for people: 850ms, 12.0s, 3.5m, 2.0h, 1.5d."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def trace_link(meta: dict[str, str], tracing_url: str | None) -> tuple[str | None, str | None]:
    """The trace id in `meta["traceparent"]`, and its link in the tracing UI: `tracing_url`
    with `{trace_id}` replaced (or the id appended when it has no placeholder)."""
    match = _TRACEPARENT.match(meta.get("traceparent", "").strip().lower())
    if match is None:
        return None, None
    trace_id = match.group(1)
    if tracing_url is None:
        return trace_id, None
    if "{trace_id}" in tracing_url:
        return trace_id, tracing_url.replace("{trace_id}", quote(trace_id))
    return trace_id, tracing_url + quote(trace_id)


# -- pages --------------------------------------------------------------------------------


async def overview(engine: Engine) -> list[dict[str, Any]]:
    """Per workflow: counts by status, queue depth, oldest wait, dead letters and
    completions per minute over the last hour (counted by the backend where it offers
    `TaskCounts.stats()`, else read page by page). `completions` is empty, and the two
    sums of it None, where the backend does not count completions."""
    found = await admin.stats(engine, None)
    return [
        {
            **asdict(s),
            "completions": list(s.completions),
            "completed_last_hour": sum(s.completions) if s.completions else None,
            "peak_per_minute": max(s.completions) if s.completions else None,
            "total": sum(s.counts.values()),
            "oldest_wait": span(s.oldest_wait_seconds),
        }
        for s in found
    ]


@dataclass(frozen=True)
class Bar:
    """One minute's bar: where it is drawn (SVG user units), and what it stands for."""

    x: float
    y: float
    width: float
    height: float
    count: int
    minutes_ago: int


@dataclass(frozen=True)
class CompletionChart:
    """A workflow's completions per minute as the overview draws them: one bar a minute,
    scaled so the busiest minute (`scale`, the top of the y axis) fills the plot, and the
    text alternative (`summary`). The class constants place the plot (LEFT..RIGHT,
    TOP..BOTTOM) in the drawing, leaving room for the axis labels."""

    WIDTH: ClassVar[int] = 340
    HEIGHT: ClassVar[int] = 88
    LEFT: ClassVar[int] = 34
    RIGHT: ClassVar[int] = 334
    TOP: ClassVar[int] = 8
    BOTTOM: ClassVar[int] = 68

    bars: list[Bar]
    total: int
    peak: int
    scale: int
    summary: str


def completion_chart(counts: Sequence[int]) -> CompletionChart | None:
    """The chart of `WorkflowStats.completions` (oldest minute first, the current one
    last), or None when the backend does not count completions (no entries)."""
    if not counts:
        return None
    total, peak = sum(counts), max(counts)
    scale = max(peak, 1)
    frame = CompletionChart
    step = (frame.RIGHT - frame.LEFT) / len(counts)
    room = frame.BOTTOM - frame.TOP
    bars = []
    for index, count in enumerate(counts):
        # A minute with any completion stays visible, however busy the peak minute was.
        height = 0.0 if count == 0 else max(1.0, round(room * count / scale, 1))
        bars.append(Bar(x=round(frame.LEFT + step * index + step * 0.1, 2), y=round(frame.BOTTOM - height, 1),
                        width=round(step * 0.8, 2), height=height, count=count,
                        minutes_ago=len(counts) - 1 - index))
    if total:
        summary = f"{total} completed in the last hour; peak {peak} per minute"
    else:
        summary = "none completed in the last hour"
    return CompletionChart(bars, total, peak, scale, summary)


def summary(task: Task) -> dict[str, Any]:
    """One row of a listing."""
    return {
        "id": task.id,
        "workflow": task.workflow,
        "status": task.status.value,
        "step": task.step,
        "attempt": task.attempt,
        "dead_letter": None if task.dead_letter is None else str(task.dead_letter),
        "error": None if task.error is None else f"{task.error.type}: {task.error.message}",
        "created_at": iso(task.created_at),
        "updated_at": iso(task.updated_at),
        "updated_ago": ago(task.updated_at),
        "terminal": task.status.terminal,
        "requeueable": requeueable(task),
    }


def requeueable(task: Task) -> bool:
    """Whether `Engine.requeue` applies to the task's status at all."""
    restartable = task.status in DEAD_LETTER_STATUSES or task.status is TaskStatus.CANCELLED
    return restartable and task.dead_letter != "corrupt-record"


def _error(error: TaskError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "step": error.step, "attempt": error.attempt,
            "traceback": error.traceback, "at": iso(error.at)}


def task_detail(task: Task, wf: Workflow | None, *, show_payloads: bool,
                tracing_url: str | None) -> dict[str, Any]:
    """Everything the task page shows: steps with results, attempts, failures with
    tracebacks, meta and the trace link, and the steps a requeue may restart from."""
    steps = []
    for row in admin.step_rows(task, wf):
        result = task.results.get(row.name)
        has_result = row.name in task.results
        steps.append({
            **asdict(row),
            "result": asdict(payload_of(result, show=show_payloads)) if has_result else None,
        })
    trace_id, trace_url = trace_link(task.meta, tracing_url)
    return {
        **summary(task),
        "steps": steps,
        "steps_total": None if wf is None else len(wf.steps),
        "workflow_known": wf is not None,
        "restart_steps": restart_steps(task, wf),
        "body": asdict(payload_of(None, show=show_payloads, raw=task.body)),
        "error": _error(task.error),
        "failures": [_error(f) for f in task.failures],
        "meta": dict(sorted(task.meta.items())),
        "trace_id": trace_id,
        "trace_url": trace_url,
        "idempotency_key": task.idempotency_key,
        "not_before": iso(task.not_before),
        "owner": task.owner,
        "cancel_requested": task.cancel_requested,
        "version": task.version,
    }


def restart_steps(task: Task, wf: Workflow | None) -> list[dict[str, Any]]:
    """The steps a requeue may restart from: every step whose predecessors all have a saved
    result (what `Engine.requeue` accepts), the default one marked."""
    if wf is None or not requeueable(task):
        return []
    default = 0 if task.compensated else task.step
    choices = []
    for index, step in enumerate(wf.steps):
        choices.append({"index": index, "number": index + 1, "name": step.name, "default": index == default})
        if step.name not in task.results:
            break
    return choices
