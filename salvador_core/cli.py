"""The `salvador` command line: run workers, submit and inspect tasks, operate the backend.

Every command reaches its backend by `--url` or the environment (`SALVADOR_URL`, or
`SALVADOR_STORE_URL` + `SALVADOR_QUEUE_URL`; `Settings.from_env`), prints a human table by
default and one JSON document with `--json`, and ends with a documented exit status
(`EXIT_*` below, docs/operations.md). A mistake or an unreachable server is ONE line on
stderr, never a traceback (`SALVADOR_DEBUG=1` shows it).

Commands that only produce or read tasks need no workflow code: `submit` registers a
placeholder workflow under the given name (`_placeholder`), used for producing only, never
run. `--app MODULE:ATTR` (or `$SALVADOR_APP`) loads the real workflows where their
definition matters: step names in `show`, `dead-letters requeue`, and `cancel` of a task
whose completed steps may need compensating.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, NoReturn, TypeVar

import click

from salvador_core.admin import (
    admin_engine,
    backend_location,
    load_workflows,
    parse_duration,
    step_rows,
    workflows_of,
)
from salvador_core.admin import stats as _stats  # `stats` is the command's name here
from salvador_core.config import connect
from salvador_core.durability import Finding, blocking, findings, halves
from salvador_core.engine import Engine
from salvador_core.errors import (
    BackendUnavailableError,
    ConfigurationError,
    PayloadTooLargeError,
    SalvadorError,
    StepResultError,
    TaskNotFoundError,
    UnknownWorkflowError,
)
from salvador_core.protocols import TaskCounts
from salvador_core.settings import load_object
from salvador_core.split import SplitBackend
from salvador_core.task import (
    TERMINAL_STATUSES,
    Page,
    Task,
    TaskError,
    TaskStatus,
    WorkflowStats,
    utcnow,
)
from salvador_core.workflow import StepContext, Workflow

__all__ = ["TaskCounts", "WorkflowStats", "cli", "main"]

#: Exit statuses (docs/operations.md lists them).
EXIT_OK = 0
EXIT_FINDING = 1  # `check` found a risk, or the operation was refused (task in the wrong state)
EXIT_USAGE = 2  # a bad argument, option, URL or setting
EXIT_UNAVAILABLE = 3  # the backend cannot be reached
EXIT_NOT_FOUND = 4  # no such task
EXIT_INTERNAL = 5  # a bug: please report it (SALVADOR_DEBUG=1 shows the traceback)
EXIT_INTERRUPTED = 130  # Ctrl-C outside a worker

_T = TypeVar("_T")
_STATUSES = [s.value for s in TaskStatus]


# -- errors and exit statuses -------------------------------------------------------------


def _exit_status(exc: BaseException) -> int:
    """The exit status for an error a command let through."""
    if isinstance(exc, BackendUnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(exc, TaskNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(
        exc, (ConfigurationError, UnknownWorkflowError, PayloadTooLargeError, StepResultError,
              ValueError, TypeError)
    ):
        return EXIT_USAGE
    if isinstance(exc, SalvadorError):
        return EXIT_FINDING
    return EXIT_INTERNAL


def _fail(status: int, message: str) -> NoReturn:
    """One line on stderr, then exit."""
    line = " ".join(message.split())
    click.echo(f"salvador: error: {line}", err=True)
    sys.exit(status)


class _Salvador(click.Group):
    """The command group, with one error policy: every failure is one line and an exit
    status, whether run as `salvador`, `python -m salvador_core` or through CliRunner."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            status = super().main(args, prog_name or "salvador", complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "salvador"
            _fail(EXIT_USAGE, f"{exc.format_message()} (see: {where} --help)")
        except click.ClickException as exc:
            _fail(exc.exit_code, exc.format_message())
        except (click.Abort, KeyboardInterrupt):
            _fail(EXIT_INTERRUPTED, "interrupted")
        except Exception as exc:
            if os.environ.get("SALVADOR_DEBUG") == "1":
                raise
            status = _exit_status(exc)
            text = str(exc) or type(exc).__name__
            if status == EXIT_INTERNAL:
                text = (f"unexpected {type(exc).__name__}: {text} (a bug; run again with "
                        "SALVADOR_DEBUG=1 for the traceback and report it)")
            _fail(status, text)
        sys.exit(status if isinstance(status, int) else EXIT_OK)


@click.group(cls=_Salvador, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """salvador: run workers and operate durable workflows.

    The backend comes from --url, else $SALVADOR_URL (or $SALVADOR_STORE_URL and
    $SALVADOR_QUEUE_URL). Exit status: 0 ok, 1 a finding or a refused operation, 2 a usage
    or configuration mistake, 3 backend unreachable, 4 no such task, 5 internal error.
    """


def main() -> None:
    """The `salvador` console script."""
    cli.main(prog_name="salvador")


# -- shared options and helpers -----------------------------------------------------------

_F = TypeVar("_F", bound=Callable[..., Any])


def _backend_options(fn: _F) -> _F:
    """`--url` and `--json`, which every command but `worker` takes."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")(fn)
    return click.option(
        "--url", metavar="URL", default=None,
        help="Backend URL (default: $SALVADOR_URL).",
    )(fn)


def _app_option(fn: _F) -> _F:
    return click.option(
        "--app", metavar="MODULE:ATTR", envvar="SALVADOR_APP", default=None,
        help="Load the workflows (an Engine, a Workflow or a list of them); default $SALVADOR_APP.",
    )(fn)


class _Duration(click.ParamType):  # type: ignore[type-arg]
    """Seconds as a number, or with a unit: 90, 30s, 30m, 12h, 7d, 2w."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
            if not math.isfinite(seconds):
                self.fail(f"{value!r} is not a finite duration", param, ctx)
            return seconds
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()


def _run(make: Callable[[], Awaitable[_T]]) -> _T:
    async def call() -> _T:
        return await make()

    return asyncio.run(call())


@contextlib.contextmanager
def _quiet_logs(level: int = logging.ERROR) -> Iterator[None]:
    """Keep salvador's own log records below `level` off stderr while a command runs (the
    command reports what matters itself), and put the level back after."""
    logger = logging.getLogger("salvador")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def _admin_engine(url: str | None, app: str | None) -> Engine:
    """`admin_engine` with the workflows of `app` if given."""
    return _engine_for(url, load_workflows(app))


def _engine_for(url: str | None, workflows: list[Workflow]) -> Engine:
    """`admin_engine`, after saying in CLI terms when no backend was named at all."""
    if url is None and not os.environ.get("SALVADOR_URL") and not (
        os.environ.get("SALVADOR_STORE_URL") and os.environ.get("SALVADOR_QUEUE_URL")
    ):
        raise click.UsageError("no backend: pass --url URL (e.g. --url sqlite:///salvador.db) or set "
                               "$SALVADOR_URL")
    return admin_engine(url, workflows)


async def _with_engine(url: str | None, app: str | None, use: Callable[[Engine], Awaitable[_T]]) -> _T:
    engine = _admin_engine(url, app)
    async with engine:
        return await use(engine)


def _emit(as_json: bool, document: Any, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))
    else:
        human()


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _ago(moment: datetime) -> str:
    return _span((utcnow() - moment).total_seconds()) + " ago"


def _span(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


# -- worker -------------------------------------------------------------------------------


@cli.command()
@click.argument("target", metavar="MODULE:ATTR")
@click.option("--url", metavar="URL", default=None, help="Backend URL (default: $SALVADOR_URL).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Tasks of each workflow run at once (default: $SALVADOR_CONCURRENCY or 1).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def worker(target: str, url: str | None, concurrency: int | None, log_level: str) -> int:
    """Run the workflows of MODULE:ATTR until SIGTERM or Ctrl-C, which drain gracefully.

    MODULE:ATTR names an Engine, a Workflow or a list of workflows, importable from the
    current directory (e.g. myapp.tasks:engine). An Engine runs as built, unless --url or
    --concurrency is given: then its workflows run on an engine with those settings.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m`, uvicorn and celery do
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = _worker_engine(load_object(target), target, url, concurrency)
    asyncio.run(_work(engine))
    click.echo("salvador worker: drained and stopped", err=True)
    return EXIT_OK


async def _work(engine: Engine) -> None:
    """Open first, so an unreachable backend is the only line printed, then run."""
    async with engine:
        names = ", ".join(sorted(engine.workflows))
        click.echo(f"salvador worker: running {names} on {backend_location(engine)}, concurrency "
                   f"{engine.concurrency}, pid {os.getpid()}; SIGTERM or Ctrl-C drains", err=True)
        await engine.run()


def _worker_engine(target: Any, spec: str, url: str | None, concurrency: int | None) -> Engine:
    if isinstance(target, Engine):
        if url is None and concurrency is None:
            return target
        settings = target.settings.with_options(**({"concurrency": concurrency} if concurrency else {}))
        workflows = list(target.workflows.values())
        if url is None:
            queue = None if target.queue is target.store else target.queue  # type: ignore[comparison-overlap]
            return Engine(target.store, queue, workflows=workflows, settings=settings,
                          observers=[target.observer], logger=target.log)
        settings = settings.with_options(url=url, store_url=None, queue_url=None)
        return Engine(connect(url), workflows=workflows, settings=settings,
                      observers=[target.observer], logger=target.log)
    return Engine.from_url(url, workflows=workflows_of(target, spec), concurrency=concurrency)


# -- submit -------------------------------------------------------------------------------


def _not_run(ctx: StepContext) -> None:
    raise RuntimeError("a placeholder workflow registered by `salvador submit` must never run")


def _placeholder(name: str) -> Workflow:
    """A stand-in for workflow `name`, registered on the CLI's own engine so that
    `Engine.submit` accepts the name without importing the workflow's code. That engine
    only produces (it never calls `run()`), so the step is never run; real workers run the
    task with the real workflow of that name."""
    return Workflow(name).step("placeholder", _not_run)


def _body(text: str | None) -> Any:
    """--body: JSON text, @file or - (stdin), parsed so a typo fails here, not in a step."""
    if text is None:
        return b""
    source = "--body"
    if text == "-":
        text, source = sys.stdin.read(), "the JSON on stdin"
    elif text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"cannot read {path!r}: {exc}", param_hint="--body") from None
        source = f"file {path!r}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"{source} is not valid JSON ({exc}); pass JSON text, @file or - for stdin",
            param_hint="--body",
        ) from None


def _meta(pairs: Sequence[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        meta[key] = value
    return meta


@cli.command()
@click.argument("workflow")
@click.option("--body", metavar="JSON|@FILE|-", default=None, help="The task body as JSON (default: empty).")
@click.option("--idempotency-key", default=None, help="Submitting the same key again returns the first task.")
@click.option("--delay", type=DURATION, default=None, help="Hold delivery back: 90, 30s, 5m, 2h, 1d.")
@click.option("--meta", "meta_pairs", multiple=True, metavar="KEY=VALUE", help="Task metadata; repeatable.")
@_app_option
@_backend_options
def submit(workflow: str, body: str | None, idempotency_key: str | None, delay: float | None,
           meta_pairs: tuple[str, ...], app: str | None, url: str | None, as_json: bool) -> int:
    """Store a task for WORKFLOW and print its id once it is durable.

    The workflow's code need not be importable here: without --app the name is taken as
    given (workers that know it run the task).
    """
    value, meta = _body(body), _meta(meta_pairs)

    async def go(engine: Engine) -> str:
        if app is None:
            engine.register(_placeholder(workflow))
        return await engine.submit(workflow, value, idempotency_key=idempotency_key, meta=meta,
                                   delay=delay)

    with _quiet_logs():
        task_id = _run(lambda: _with_engine(url, app, go))
    _emit(as_json, {"task_id": task_id, "workflow": workflow}, lambda: click.echo(task_id))
    return EXIT_OK


# -- show and list ------------------------------------------------------------------------


def _error_dict(error: TaskError | None) -> dict[str, Any] | None:
    return None if error is None else {**error.to_dict(), "at": _iso(error.at)}


def _body_field(body: bytes) -> dict[str, Any]:
    try:
        return {"body": body.decode("utf-8"), "body_encoding": "utf-8", "body_bytes": len(body)}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode(), "body_encoding": "base64", "body_bytes": len(body)}


def _summary(task: Task) -> dict[str, Any]:
    return {
        "id": task.id, "workflow": task.workflow, "status": task.status.value, "step": task.step,
        "attempt": task.attempt, "dead_letter": None if task.dead_letter is None else str(task.dead_letter),
        "created_at": _iso(task.created_at), "updated_at": _iso(task.updated_at),
    }


def _task_document(task: Task, wf: Workflow | None) -> dict[str, Any]:
    took = (task.updated_at - task.created_at).total_seconds() if task.status.terminal else None
    return {
        **_summary(task),
        "steps": [asdict(row) for row in step_rows(task, wf)],
        "steps_total": len(wf.steps) if wf is not None else None,
        "duration_seconds": took,
        "results": task.results,
        "error": _error_dict(task.error),
        "failures": [_error_dict(f) for f in task.failures],
        "meta": task.meta,
        "idempotency_key": task.idempotency_key,
        "not_before": _iso(task.not_before),
        "owner": task.owner,
        "cancel_requested": task.cancel_requested,
        "compensated": list(task.compensated),
        "version": task.version,
        **_body_field(task.body),
    }


def _print_task(doc: dict[str, Any]) -> None:
    status = doc["status"] + (f" (dead letter: {doc['dead_letter']})" if doc["dead_letter"] else "")
    done = sum(1 for s in doc["steps"] if s["state"] in ("done", "compensated"))
    progress = f"{done} of {doc['steps_total']}" if doc["steps_total"] is not None else str(done)
    lines = [
        ("task", doc["id"]), ("workflow", doc["workflow"]), ("status", status),
        ("progress", f"{progress} step(s) done, attempt {doc['attempt']}"),
        ("created", doc["created_at"]), ("updated", doc["updated_at"]),
    ]
    if doc["duration_seconds"] is not None:
        lines.append(("took", _span(doc["duration_seconds"])))
    for label, key in (("not before", "not_before"), ("owner", "owner"),
                       ("idempotency key", "idempotency_key")):
        if doc[key]:
            lines.append((label, doc[key]))
    if doc["cancel_requested"]:
        lines.append(("cancel", "requested"))
    lines.append(("body", f"{doc['body_bytes']} bytes"))
    for label, value in lines:
        click.echo(f"{label + ':':<17}{value}")
    if doc["steps"]:
        click.echo("\nsteps (records keep no per-step timings):")
        _table(("#", "step", "state", "result", "attempts"), [
            (s["number"], s["name"], s["state"],
             "-" if s["result_bytes"] is None else f"{s['result_bytes']} B",
             "-" if s["attempts"] is None else s["attempts"])
            for s in doc["steps"]
        ])
    if doc["error"]:
        _print_error("error", doc["error"])
    for failure in doc["failures"]:
        _print_error("failed attempt", failure, traceback=False)
    if doc["meta"]:
        click.echo("\nmeta:")
        for key, value in doc["meta"].items():
            click.echo(f"  {key} = {value}")


def _print_error(label: str, error: dict[str, Any], *, traceback: bool = True) -> None:
    where = f"step {error['step']}, " if error["step"] else ""
    click.echo(f"\n{label} ({where}attempt {error['attempt']}, at {error['at']}):")
    click.echo(f"  {error['type']}: {error['message']}")
    if traceback and error["traceback"]:
        for line in error["traceback"].rstrip().splitlines():
            click.echo(f"    {line}")


@cli.command()
@click.argument("task_id")
@_app_option
@_backend_options
def show(task_id: str, app: str | None, url: str | None, as_json: bool) -> int:
    """Show one task: status, steps, error with traceback, failed attempts, meta."""

    async def go(engine: Engine) -> tuple[Task | None, Workflow | None]:
        task = await engine.get_task(task_id)
        return task, None if task is None else engine.workflows.get(task.workflow)

    with _quiet_logs():
        task, wf = _run(lambda: _with_engine(url, app, go))
    if task is None:
        raise TaskNotFoundError(task_id)
    doc = _task_document(task, wf)
    _emit(as_json, doc, lambda: _print_task(doc))
    return EXIT_OK


def _print_page(page: Page, command: str) -> None:
    if not page.tasks:
        click.echo("no tasks")
    else:
        _table(("id", "workflow", "status", "step", "attempt", "dead letter", "updated"), [
            (t.id, t.workflow, t.status.value, t.step, t.attempt, t.dead_letter or "-", _ago(t.updated_at))
            for t in page.tasks
        ])
    if page.cursor:
        click.echo(f"more: {command} --cursor {page.cursor}")


def _page_document(page: Page) -> dict[str, Any]:
    return {"tasks": [_summary(t) for t in page.tasks], "cursor": page.cursor}


@cli.command("list")
@click.option("--workflow", default=None, help="Only this workflow's tasks.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(_STATUSES), help="Repeatable.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--cursor", default=None, help="Where the previous page ended (printed below it).")
@_backend_options
def list_tasks(workflow: str | None, statuses: tuple[str, ...], limit: int, cursor: str | None,
               url: str | None, as_json: bool) -> int:
    """List tasks, oldest first, one page at a time."""
    wanted = [TaskStatus(s) for s in statuses] or None

    async def go(engine: Engine) -> Page:
        return await engine.list_tasks(workflow=workflow, status=wanted, limit=limit, cursor=cursor)

    with _quiet_logs():
        page = _run(lambda: _with_engine(url, None, go))
    _emit(as_json, _page_document(page), lambda: _print_page(page, "salvador list"))
    return EXIT_OK


# -- stats --------------------------------------------------------------------------------


@cli.command()
@click.option("--workflow", default=None, help="Only this workflow.")
@_backend_options
def stats(workflow: str | None, url: str | None, as_json: bool) -> int:
    """Per workflow: tasks by status, queue depth, oldest wait, dead letters.

    Backends without a counting method are read page by page: slow on big stores.
    """
    with _quiet_logs():
        found = _run(lambda: _with_engine(url, None, lambda engine: _stats(engine, workflow)))

    def human() -> None:
        if not found:
            click.echo("no tasks")
            return
        _table(("workflow", *_STATUSES, "queued", "delayed", "oldest wait", "dead letters"), [
            (s.workflow, *(s.counts.get(name, 0) for name in _STATUSES), s.queued, s.delayed,
             "-" if s.oldest_wait_seconds is None else _span(s.oldest_wait_seconds), s.dead_letters)
            for s in found
        ])

    _emit(as_json, {"workflows": [asdict(s) for s in found]}, human)
    return EXIT_OK


# -- dead letters, cancel, purge ----------------------------------------------------------


@cli.group("dead-letters")
def dead_letters() -> None:
    """Tasks that failed for good: list, requeue, discard."""


@dead_letters.command("list")
@click.option("--workflow", default=None, help="Only this workflow's dead letters.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--cursor", default=None, help="Where the previous page ended (printed below it).")
@_backend_options
def dead_letters_list(workflow: str | None, limit: int, cursor: str | None, url: str | None,
                      as_json: bool) -> int:
    """List failed and compensated tasks with their reason."""
    with _quiet_logs():
        page = _run(lambda: _with_engine(
            url, None, lambda engine: engine.dead_letters(workflow, limit=limit, cursor=cursor)
        ))

    def human() -> None:
        _print_page(page, "salvador dead-letters list")
        for task in page.tasks:
            if task.error is not None:
                click.echo(f"  {task.id}: {task.error.type}: {task.error.message}")

    doc = _page_document(page)
    for entry, task in zip(doc["tasks"], page.tasks, strict=True):
        entry["error"] = _error_dict(task.error)
    _emit(as_json, doc, human)
    return EXIT_OK


def _step_choice(from_step: str | None) -> int | str | None:
    """--from-step: a step name, or its number as `show` prints it (1 = the first step)."""
    if from_step is None or not from_step.isdigit():
        return from_step
    number = int(from_step)
    if number < 1:
        raise click.BadParameter("step numbers start at 1", param_hint="--from-step")
    return number - 1


@dead_letters.command("requeue")
@click.argument("task_id")
@click.option("--from-step", default=None, metavar="NAME|NUMBER",
              help="Restart here (default: the failed step; from the start if compensated).")
@_app_option
@_backend_options
def dead_letters_requeue(task_id: str, from_step: str | None, app: str | None, url: str | None,
                         as_json: bool) -> int:
    """Run a failed, compensated or cancelled task again (needs --app: the workflow's steps)."""
    step = _step_choice(from_step)
    if app is None:
        raise click.UsageError("requeue needs the workflow's steps: pass --app MODULE:ATTR "
                               "(or set $SALVADOR_APP)")
    with _quiet_logs():
        task = _run(lambda: _with_engine(url, app, lambda engine: engine.requeue(task_id, from_step=step)))
    _emit(as_json, _summary(task),
          lambda: click.echo(f"requeued {task.id}: pending at step {task.step + 1}"))
    return EXIT_OK


@dead_letters.command("discard")
@click.argument("task_id")
@_backend_options
def dead_letters_discard(task_id: str, url: str | None, as_json: bool) -> int:
    """Delete a finished task for good."""
    with _quiet_logs():
        removed = _run(lambda: _with_engine(url, None, lambda engine: engine.discard(task_id)))
    if not removed:
        raise TaskNotFoundError(task_id)
    _emit(as_json, {"task_id": task_id, "discarded": True}, lambda: click.echo(f"discarded {task_id}"))
    return EXIT_OK


@cli.command()
@click.argument("task_id")
@_app_option
@_backend_options
def cancel(task_id: str, app: str | None, url: str | None, as_json: bool) -> int:
    """Cancel a task: it runs no further step; completed steps are compensated by a worker.

    A pending task that already completed steps needs --app: only its workflow knows
    whether they must be compensated.
    """

    async def go(engine: Engine) -> tuple[Task, bool]:
        task = await engine.get_task(task_id)
        if task is None:
            raise TaskNotFoundError(task_id)
        if (task.status is TaskStatus.PENDING and task.step > 0 and task.workflow not in engine.workflows):
            raise click.UsageError(
                f"task {task_id} completed {task.step} step(s) of {task.workflow!r}; cancelling it "
                "needs that workflow to know which to compensate: pass --app MODULE:ATTR"
            )
        was_terminal = task.status.terminal
        return await engine.cancel(task_id), was_terminal

    with _quiet_logs():
        task, was_terminal = _run(lambda: _with_engine(url, app, go))
    if was_terminal:
        _fail(EXIT_FINDING, f"task {task_id} had already finished ({task.status.value}); nothing to cancel")
    waiting = task.status is not TaskStatus.CANCELLED
    note = "cancel requested; a worker stops and compensates it" if waiting else "cancelled"
    _emit(as_json, {**_summary(task), "cancel_requested": task.cancel_requested},
          lambda: click.echo(f"{task_id}: {note}"))
    return EXIT_OK


@cli.command()
@click.option("--older-than", type=DURATION, required=True, help="Age since the last update: 3600, 12h, 7d.")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(sorted(s.value for s in TERMINAL_STATUSES)),
              help="Only these finished statuses (default: all of them). Repeatable.")
@_backend_options
def purge(older_than: float, statuses: tuple[str, ...], url: str | None, as_json: bool) -> int:
    """Delete finished tasks not updated for --older-than."""
    wanted = [TaskStatus(s) for s in statuses] or list(TERMINAL_STATUSES)
    with _quiet_logs():
        count = _run(lambda: _with_engine(url, None, lambda engine: engine.purge(older_than, wanted)))
    _emit(as_json, {"purged": count}, lambda: click.echo(f"purged {count} task(s)"))
    return EXIT_OK


# -- migrate and check --------------------------------------------------------------------


def _parts(backend: Any) -> list[Any]:
    if isinstance(backend, SplitBackend):
        return halves(backend)
    return [backend]


@cli.command()
@_backend_options
def migrate(url: str | None, as_json: bool) -> int:
    """Bring the backend's schema up to this salvador's version, where it has one."""
    engine = _engine_for(url, [])
    results: list[dict[str, Any]] = []

    async def go() -> None:
        for part in _parts(engine.backend):
            method = getattr(part, "migrate", None)
            name = type(part).__name__
            if method is None:
                results.append({"backend": name, "migrated": None})
            else:
                applied = await method()
                results.append({"backend": name, "migrated": list(applied or [])})

    with _quiet_logs():
        _run(go)

    def human() -> None:
        for entry in results:
            if entry["migrated"] is None:
                click.echo(f"{entry['backend']}: nothing to migrate (it prepares its layout when it opens)")
            elif entry["migrated"]:
                click.echo(f"{entry['backend']}: applied schema version(s) {entry['migrated']}")
            else:
                click.echo(f"{entry['backend']}: schema already up to date")

    _emit(as_json, {"backends": results}, human)
    return EXIT_OK


@cli.command()
@click.option("--strict", is_flag=True, help="Also fail (exit 1) on warnings: power-loss exposure.")
@_backend_options
def check(strict: bool, url: str | None, as_json: bool) -> int:
    """Durability preflight: what a crash would lose with this backend, and the fix.

    Exit 1 when a critical finding is present (with --strict, a warning too), else 0.
    """
    engine = _engine_for(url, [])

    async def go() -> list[Finding]:
        async with engine:
            return await findings(engine.backend)

    with _quiet_logs():
        found = _run(go)
    failing = blocking(found, strict=strict)
    where = backend_location(engine)

    def human() -> None:
        if not found:
            click.echo(f"{where}: no durability risk found")
        for f in found:
            click.echo(f"[{f.severity}] {f.setting}\n  loses: {f.loses}\n  fix:   {f.fix}")
        if found:
            verdict = "FAIL" if failing else "ok"
            click.echo(f"{where}: {verdict} ({len(failing)} finding(s) fail the check)")

    _emit(as_json, {"url": where, "ok": not failing, "findings": [f.to_dict() for f in found]}, human)
    return EXIT_FINDING if failing else EXIT_OK


# -- dashboard ----------------------------------------------------------------------------


@cli.command()
@click.option("--url", metavar="URL", default=None, help="Backend URL (default: $SALVADOR_URL).")
@_app_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --auth.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--auth", metavar="TOKEN|USER:PASS", envvar="SALVADOR_DASHBOARD_AUTH", default=None,
              help="Require HTTP Basic credentials (a TOKEN is the password for any user); "
                   "default $SALVADOR_DASHBOARD_AUTH.")
@click.option("--read-only", is_flag=True, help="Hide and refuse requeue, discard and cancel.")
@click.option("--show-payloads", is_flag=True,
              help="Show task bodies and step results (sizes only otherwise).")
@click.option("--tracing-url", metavar="URL", default=None,
              help="Link trace ids to your tracing UI; {trace_id} marks where the id goes.")
def dashboard(url: str | None, app: str | None, host: str, port: int, auth: str | None, read_only: bool,
              show_payloads: bool, tracing_url: str | None) -> int:
    """Serve the web dashboard: overview, tasks, dead letters; requeue, discard, cancel.

    Listens on 127.0.0.1 by default. Requeue (and cancelling a task that may need
    compensation) needs --app MODULE:ATTR: the workflows' steps. Needs the `dashboard`
    extra: pip install 'salvador-workflows[dashboard]'.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # --app names a module of the current directory
    try:
        from salvador_core.dashboard import serve
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs its extra ({exc}): pip install 'salvador-workflows[dashboard]'"
        ) from None
    if url is None:
        _engine_for(None, [])  # the CLI's one-line message when no backend is named at all
    serve(url, host=host, port=port, auth=auth, app=app, read_only=read_only, show_payloads=show_payloads,
          tracing_url=tracing_url)
    return EXIT_OK
