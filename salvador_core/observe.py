"""The observer seam: one place where the engine reports what happens to tasks and workers.

The engine calls an `Observer`'s hooks as things happen; logging is one observer
(`LoggingObserver`, installed by default), tracing and metrics are others. Hooks run on the
event loop, in the worker or producer process, and must return quickly. An exception from
a hook of a user's observer is logged and ignored: observing must never change what the
engine does. The base class's hooks do nothing, so an observer overrides only what it
needs, and hooks added later break no observer.

Every log record about a task carries `task_id`, `workflow`, `step` and `attempt` as
structured `extra` (for JSON log formatters), and never a body or a step result: those
`LoggingObserver` writes, those a run writes itself (`TaskLog`), and those a step writes
through `ctx.logger`. Hooks given only a claim log the step and attempt of the run in
progress (`run_fields`); None where it has none yet (a record it could not read).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from salvador_core.task import Claim, DeadLetter, Task, TaskError, WorkflowStats

#: The logger salvador writes to unless an engine is given another.
logger = logging.getLogger("salvador")


class Observer:
    """Hooks called by the engine; each does nothing here. Subclass and override.

    `task` arguments are the task as stored at that moment (after the write the event is
    about, where there is one). Durations are in seconds, measured with `time.perf_counter`.
    """

    # -- producer side ---------------------------------------------------------------------

    def submitting(self, task: Task) -> Task:
        """A task is about to be stored; return it, or a copy with more `meta` (say trace
        context), which is what is stored. Called for every submit, duplicates included."""
        return task

    def submitted(self, task: Task, *, created: bool) -> None:
        """`task` is stored (`created` False: an earlier task with the same idempotency key
        was found, and `task` is that one)."""

    # -- worker side -------------------------------------------------------------------------

    def worker_started(
        self, worker_id: str, workflows: Sequence[str], *, concurrency: int, lease: float
    ) -> None:
        """A worker began claiming tasks of `workflows`."""

    def worker_stopped(self, worker_id: str) -> None:
        """A worker finished draining and stopped."""

    def claimed(self, claim: Claim) -> None:
        """A task was leased to this worker (`claim.deliveries` counts redeliveries)."""

    def resumed(self, task: Task, *, where: str) -> None:
        """A task whose previous worker died or lost its lease is picked up again; `where` is
        the step (or "compensations") it resumes at, `task.attempt` the lost attempt."""

    def step_started(self, task: Task, step: str, *, compensation: bool) -> None:
        """A step (or its compensation) is called, for attempt `task.attempt`."""

    def step_finished(
        self, task: Task, step: str, *, compensation: bool, seconds: float, error: BaseException | None
    ) -> None:
        """The call returned (`error` None) or raised `error`; `seconds` it took."""

    def retry_scheduled(self, task: Task, step: str, *, delay: float, error: TaskError) -> None:
        """A failed attempt will be tried again in `delay` seconds (`task` is pending)."""

    def dead_lettered(self, task: Task, reason: DeadLetter, error: TaskError) -> None:
        """The task failed for good (or is being rolled back first) for `reason`."""

    def settled(self, task: Task) -> None:
        """A run wrote the task's final status (completed, failed, cancelled, compensated)."""

    def released(self, task: Task, *, reason: str) -> None:
        """The worker handed the task back unfinished (`reason`: "shutdown")."""

    def lease_lost(self, claim: Claim, *, detail: str, fenced: bool) -> None:
        """This worker no longer owns the task: its lease expired, another worker took it
        over, or the record vanished. `fenced`: a write of this worker was refused by the
        version fence (the zombie write fencing exists to stop)."""

    def run_failed(self, claim: Claim, error: BaseException, *, recorded: bool) -> None:
        """Handling the task failed for a reason that is not the step's: the backend
        (`BackendUnavailableError`, ...) or salvador itself. `recorded`: the error was written
        on the task; otherwise its lease expires and another worker retries it."""

    def record_unreadable(self, claim: Claim, error: BaseException) -> None:
        """The claimed task's record is corrupt (quarantined as a dead letter) or was
        written by a newer salvador (left for a newer worker)."""

    def step_thread_abandoned(self, task: Task, step: str, *, reason: str, abandoned: int) -> None:
        """A sync step's thread goes on running though nobody waits for it (timed out, or
        stopped); `abandoned` is how many such threads this process has now."""

    def queue_stats(self, stats: Sequence[WorkflowStats]) -> None:
        """The backend's counts (queue depth, oldest wait, tasks by status per workflow),
        read by each worker's upkeep, every lease (at most a minute), from backends that
        offer `TaskCounts`."""


#: The names of the hooks, for observers that fan out to others.
HOOKS: tuple[str, ...] = tuple(
    name for name, value in vars(Observer).items() if callable(value) and not name.startswith("_")
)


def _task_extra(task: Task, step: str | None = None) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "workflow": task.workflow,
        "step": step,
        "attempt": task.attempt,
    }


#: The fields of the run in progress in this context (each run sets it for its own asyncio
#: task), as a function called only when a record is written.
run_fields: ContextVar[Callable[[], dict[str, Any]] | None] = ContextVar("salvador_run_fields", default=None)


def _claim_extra(claim: Claim) -> dict[str, Any]:
    fields = run_fields.get()
    if fields is not None:
        extra = fields()
        if extra["task_id"] == claim.task_id:
            return extra
    return {"task_id": claim.task_id, "workflow": claim.workflow, "step": None, "attempt": None}


if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:
    _Adapter = logging.LoggerAdapter  # generic at run time only from Python 3.11


class TaskLog(_Adapter):
    """A logger for records about one task: each carries `task_id`, `workflow`, `step` and
    `attempt` as `extra`, from `fields()`, called when a record is written (a record below
    the logger's level costs nothing more). `extra` given with a call is kept beside them."""

    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        fields: Callable[[], Mapping[str, Any]],
    ) -> None:
        if isinstance(logger, logging.LoggerAdapter):
            # An adapter's own `process` would replace our extra with its own: log through
            # its logger, with its extra under ours.
            super().__init__(logger.logger, logger.extra)
        else:
            super().__init__(logger, None)
        self.fields = fields

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {}), **self.fields()}
        return msg, kwargs


def describe(exc: BaseException) -> str:
    """`Type: message`, saying what timed out when a timeout has no message of its own."""
    if str(exc):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return f"{type(exc).__name__}: an operation did not finish in time"
    return type(exc).__name__


class LoggingObserver(Observer):
    """The engine's log lines. Lifecycle at INFO, retries and takeovers at WARNING, failures
    at ERROR; per-step events at DEBUG (they cost nothing unless DEBUG is enabled)."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.log = log or logger

    def worker_started(
        self, worker_id: str, workflows: Sequence[str], *, concurrency: int, lease: float
    ) -> None:
        self.log.info(
            "worker %s running %s (concurrency %d, lease %.1fs)",
            worker_id,
            ", ".join(workflows),
            concurrency,
            lease,
        )

    def worker_stopped(self, worker_id: str) -> None:
        self.log.info("worker %s stopped", worker_id)

    def resumed(self, task: Task, *, where: str) -> None:
        self.log.warning(
            "task %s: resuming %s after a lost worker; the lost attempt was number %d",
            task.id,
            where,
            task.attempt,
            extra=_task_extra(task),
        )

    def step_started(self, task: Task, step: str, *, compensation: bool) -> None:
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug(
                "task %s: %s %r attempt %d started",
                task.id,
                "compensation of" if compensation else "step",
                step,
                task.attempt,
                extra=_task_extra(task, step),
            )

    def step_finished(
        self, task: Task, step: str, *, compensation: bool, seconds: float, error: BaseException | None
    ) -> None:
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug(
                "task %s: %s %r attempt %d %s in %.3fs",
                task.id,
                "compensation of" if compensation else "step",
                step,
                task.attempt,
                "returned" if error is None else f"raised {describe(error)}",
                seconds,
                extra=_task_extra(task, step),
            )
        if compensation and error is not None:
            self.log.error(
                "task %s: compensation of step %r failed (%s)",
                task.id,
                step,
                describe(error),
                extra=_task_extra(task, step),
            )

    def retry_scheduled(self, task: Task, step: str, *, delay: float, error: TaskError) -> None:
        self.log.warning(
            "task %s: step %r attempt %d failed (%s: %s); retrying in %.2fs",
            task.id,
            step,
            error.attempt,
            error.type.rpartition(".")[2],
            error.message,
            delay,
            extra={**_task_extra(task, step), "attempt": error.attempt},
        )

    def dead_lettered(self, task: Task, reason: DeadLetter, error: TaskError) -> None:
        self.log.error(
            "task %s: dead-lettered (%s) at step %r attempt %d: %s: %s",
            task.id,
            reason.value,
            error.step,
            error.attempt,
            error.type.rpartition(".")[2],
            error.message,
            extra={**_task_extra(task, error.step), "attempt": error.attempt},
        )

    def released(self, task: Task, *, reason: str) -> None:
        self.log.info("task %s: released for another worker (%s)", task.id, reason, extra=_task_extra(task))

    def lease_lost(self, claim: Claim, *, detail: str, fenced: bool) -> None:
        self.log.warning(
            "task %s: %s; stopped working on it", claim.task_id, detail, extra=_claim_extra(claim)
        )

    def run_failed(self, claim: Claim, error: BaseException, *, recorded: bool) -> None:
        what = (
            "recorded it as the task's failure (dead letter internal-error)"
            if recorded
            else "its lease will expire and it will be retried"
        )
        self.log.error(
            "task %s: %s (%s); %s",
            claim.task_id,
            "backend failed"
            if getattr(error, "retryable", False) or isinstance(error, (OSError, TimeoutError))
            else "internal error",
            describe(error),
            what,
            exc_info=None if getattr(error, "retryable", False) else error,
            extra=_claim_extra(claim),
        )

    def record_unreadable(self, claim: Claim, error: BaseException) -> None:
        self.log.error("task %s: %s", claim.task_id, error, extra=_claim_extra(claim))

    def step_thread_abandoned(self, task: Task, step: str, *, reason: str, abandoned: int) -> None:
        self.log.warning(
            "task %s: step %r %s; its thread is abandoned, still running (%d abandoned step "
            "thread(s) in this process); make the step poll ctx.cancelled to stop it",
            task.id,
            step,
            reason,
            abandoned,
            extra=_task_extra(task, step),
        )


def watches_steps(observer: Observer) -> bool:
    """Whether `observer` does anything with `step_started`/`step_finished` of a step that is
    not a compensation; a run that is told no neither times its steps nor calls those hooks.
    No for hooks left as the base class's no-ops, and for the `LoggingObserver` while its
    logger is below DEBUG (it logs those only at DEBUG). Asked once per run: a change of log
    level shows from the next run on."""
    if type(observer) is LoggingObserver:
        return observer.log.isEnabledFor(logging.DEBUG)
    if isinstance(observer, Observers):
        return any(watches_steps(o) for o in observer.observers)
    cls = type(observer)
    return cls.step_started is not Observer.step_started or cls.step_finished is not Observer.step_finished


class Observers(Observer):
    """Several observers as one. A hook that raises is logged and the others still run."""

    def __init__(self, observers: Iterable[Observer], log: logging.Logger | None = None) -> None:
        self.observers = list(observers)
        self.log = log or logger

    def submitting(self, task: Task) -> Task:
        for observer in self.observers:
            try:
                task = observer.submitting(task)
            except Exception:
                self.log.exception("observer %r failed in submitting(); ignored", observer)
        return task


def _fan_out(name: str) -> Callable[..., None]:
    def hook(self: Observers, *args: Any, **kwargs: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, name)(*args, **kwargs)
            except Exception:
                self.log.exception("observer %r failed in %s(); ignored", observer, name)

    hook.__name__ = name
    hook.__doc__ = getattr(Observer, name).__doc__
    return hook


for _name in HOOKS:
    if _name != "submitting":
        setattr(Observers, _name, _fan_out(_name))


def combine(observers: Iterable[Observer] | None, log: logging.Logger) -> Observer:
    """What an engine calls: the default `LoggingObserver` when `observers` is None, a bare
    `Observer` (nothing to call) when it is empty, else the one observer or a fan-out."""
    if observers is None:
        return LoggingObserver(log)
    chosen = list(observers)
    for observer in chosen:
        if not isinstance(observer, Observer):
            raise TypeError(f"observers must be salvador Observer instances, got {observer!r}")
    if not chosen:
        return Observer()
    if len(chosen) == 1 and type(chosen[0]) is LoggingObserver:
        return chosen[0]
    return Observers(chosen, log)
