"""Workflows: a name and an ordered list of steps, and the context each step receives."""

from __future__ import annotations

import inspect
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from salvador_core.observe import TaskLog
from salvador_core.retry import RetryPolicy
from salvador_core.task import Task, TaskError

StepFn = Callable[["StepContext"], "Any | Awaitable[Any]"]
F = TypeVar("F", bound=Callable[..., Any])


class CancelFlag:
    """Raised once when a step or compensation call should stop (cancel, lease lost,
    shutdown, timeout); read through `StepContext.cancelled`, from the loop or from a sync
    step's thread. A plain attribute: setting and reading one is atomic, and each call gets
    a fresh flag, so a threading.Event (a lock and a condition each time) bought nothing."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class StepContext:
    """What a step (or a compensation) gets: the task, earlier results, and its handles.

    `idempotency_key` is stable across every retry and re-delivery of this step
    (`{task_id}:{step_name}`); hand it to external systems so a replayed step does not
    charge twice. A compensation gets its own (`{task_id}:{step_name}:compensate`), so an
    API that deduplicates on keys never mistakes the refund for a replay of the charge.
    `heartbeat()` asks the engine to renew the lease now (it also renews it on its own
    every lease/3). Sync steps poll `cancelled` to stop cooperatively. Records written
    through `logger` carry `task_id`, `workflow`, `step` and `attempt` as `extra`, as the
    engine's own do.

    In a compensation, `compensation` is True, `error` is the failure that made the task
    roll back and `result` is the saved result of the step being compensated.
    """

    __slots__ = (
        "_cancel", "_heartbeat", "_log", "_task_log", "compensation", "error", "result", "step", "task"
    )

    def __init__(
        self,
        task: Task,
        step: str,
        *,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        heartbeat: Callable[[], None],
        cancel: CancelFlag | threading.Event,
        error: TaskError | None = None,
        result: Any = None,
        compensation: bool = False,
    ) -> None:
        self.task = task
        self.compensation = compensation
        self.step = step
        self._log = logger
        self._task_log: TaskLog | None = None  # made on first use: most steps never log
        self.error = error
        self.result = result
        self._heartbeat = heartbeat
        self._cancel = cancel

    @property
    def logger(self) -> TaskLog:
        """The step's logger: its records carry this task's id and workflow, the step and
        the attempt."""
        if self._task_log is None:
            self._task_log = TaskLog(self._log, self._log_fields)
        return self._task_log

    def _log_fields(self) -> dict[str, Any]:
        task = self.task
        return {"task_id": task.id, "workflow": task.workflow, "step": self.step, "attempt": task.attempt}

    @property
    def body(self) -> bytes:
        return self.task.body

    def json(self) -> Any:
        """The task body decoded as JSON."""
        return json.loads(self.task.body)

    @property
    def results(self) -> Mapping[str, Any]:
        """Saved results of the completed steps, by step name."""
        return self.task.results

    @property
    def attempt(self) -> int:
        """1 on the first try of this step, 2 on the first retry, and so on."""
        return self.task.attempt

    @property
    def idempotency_key(self) -> str:
        key = f"{self.task.id}:{self.step}"
        return f"{key}:compensate" if self.compensation else key

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled or this worker lost its lease: stop soon."""
        return self._cancel.is_set()

    def heartbeat(self) -> None:
        """Renew the lease now; callable from async steps and from sync steps' threads."""
        self._heartbeat()


@dataclass(frozen=True)
class Step:
    """One step of a workflow and how it is run."""

    name: str
    fn: StepFn
    retry: RetryPolicy | None = None
    timeout: float | None = None
    compensate: StepFn | None = None
    #: Whether calling `fn` (`compensate`) gives an awaitable: asked once here, not on
    #: every call of the step.
    fn_is_async: bool = field(init=False, repr=False, compare=False)
    compensate_is_async: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fn_is_async", is_async(self.fn))
        object.__setattr__(
            self, "compensate_is_async", self.compensate is not None and is_async(self.compensate)
        )


class Workflow:
    """A named, ordered list of steps.

    Build it by chaining `wf.step("name", fn)` or by decorating functions with
    `@wf.step()`. `retry` and `timeout` given here are the defaults for steps that set
    none of their own.
    """

    def __init__(
        self, name: str, *, retry: RetryPolicy | None = None, timeout: float | None = None
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError("a workflow needs a non-empty name")
        if len(name.encode()) > 200:
            raise ValueError(f"workflow name {name[:40]!r}... is over 200 bytes; use a shorter one")
        _check_timeout(timeout)
        self.name = name
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.steps: list[Step] = []

    @overload
    def step(
        self,
        name: str,
        fn: StepFn,
        /,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        compensate: StepFn | None = None,
    ) -> Workflow: ...

    @overload
    def step(self, name: F, /) -> F: ...

    @overload
    def step(
        self,
        name: str | None = None,
        /,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        compensate: StepFn | None = None,
    ) -> Callable[[F], F]: ...

    def step(
        self,
        name: str | Callable[..., Any] | None = None,
        fn: StepFn | None = None,
        /,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        compensate: StepFn | None = None,
    ) -> Any:
        """Append a step. With a function: returns the workflow (chainable). Without one:
        returns a decorator that appends the decorated function (named after it unless a
        name is given) and returns it unchanged."""
        if callable(name):
            self._add(name.__name__, name, retry, timeout, compensate)
            return name
        if fn is not None:
            self._add(_need_name(name), fn, retry, timeout, compensate)
            return self

        def decorate(f: F) -> F:
            self._add(name if name is not None else f.__name__, f, retry, timeout, compensate)
            return f

        return decorate

    def _add(
        self,
        name: str,
        fn: StepFn,
        retry: RetryPolicy | None,
        timeout: float | None,
        compensate: StepFn | None,
    ) -> None:
        _need_name(name)
        if any(s.name == name for s in self.steps):
            raise ValueError(f"workflow {self.name!r} already has a step named {name!r}")
        if not callable(fn):
            raise TypeError(f"step {name!r}: {fn!r} is not callable")
        if compensate is not None and not callable(compensate):
            raise TypeError(f"step {name!r}: compensate={compensate!r} is not callable")
        _check_timeout(timeout)
        self.steps.append(Step(name, fn, retry, timeout, compensate))

    def retry_for(self, step: Step) -> RetryPolicy:
        return step.retry or self.retry

    def timeout_for(self, step: Step) -> float | None:
        return step.timeout if step.timeout is not None else self.timeout

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, steps={[s.name for s in self.steps]})"


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling `fn` gives an awaitable (async def, or an object with async __call__)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - looking for an async __call__ method
    )


def _need_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a step needs a non-empty string name, got {name!r}")
    return name


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
