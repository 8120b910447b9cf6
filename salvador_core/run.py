"""The run of one claimed task: load the record, take ownership with a fenced write, run the
remaining steps (checkpointing each) or compensations, and settle.

A `ConflictError` or `LeaseLostError` anywhere means another worker owns the task now; the
run stops touching it at once. A run gets what it needs in a `RunEnv`, not the engine.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from salvador_core.errors import (
    ConflictError,
    CorruptRecordError,
    LeaseLostError,
    PayloadTooLargeError,
    RecordVersionError,
    StepCancelledError,
    StepResultError,
    StepTimeoutError,
)
from salvador_core.heartbeat import Heartbeat
from salvador_core.observe import Observer, TaskLog, run_fields, watches_steps
from salvador_core.protocols import Backend
from salvador_core.stepcall import Interrupted, StepCaller, StepFailed, StepThreads
from salvador_core.task import (
    Claim,
    DeadLetter,
    Task,
    TaskError,
    TaskStatus,
    check_size,
    dump_json,
    quarantine_task,
    utcnow,
)
from salvador_core.workflow import Step, StepContext, StepFn, Workflow

#: How many workers may die while compensating one task before it is dead-lettered
#: (`worker-lost`). Independent of the steps' retry policies: a saga whose steps must not
#: be retried still has to be rolled back.
COMPENSATION_MAX_ATTEMPTS = 5

#: The JSON of a step that returns None (most do): no need to run the encoder for it.
_NULL = b"null"
#: Result types that read back from JSON as an equal value of the same type, once
#: `dump_json` has accepted them (it refuses NaN and infinities). Exact types: subclasses
#: such as enums read back as their plain base type.
_READ_BACK_UNCHANGED = frozenset({str, int, float, bool})


def _run_tokens() -> Iterator[str]:
    """Owner tokens for one worker's runs: 4 random bytes drawn once, then the run's
    number. Two runs share a token only if their workers share host, pid, the worker id's
    3 random bytes and these 4 (56 bits), and the run number."""
    prefix = secrets.token_hex(4)
    for n in itertools.count(1):
        yield f"{prefix}.{n}"


@dataclass(frozen=True)
class RunEnv:
    """What every run of one worker shares: the backend face, its limits, the observer."""

    backend: Backend
    lease: float
    max_payload_bytes: int
    observer: Observer
    worker_id: str
    threads: StepThreads
    log: logging.Logger
    #: The runs' owner tokens (after `worker_id`): unique without reading the OS's
    #: randomness for every task (`_run_tokens`).
    run_tokens: Iterator[str] = field(default_factory=_run_tokens)


@dataclass(frozen=True)
class ActiveRun:
    """A run in progress, as `Engine.active_runs()` shows it: the task, the run's owner
    token (written into the record while it owns the task), its current lease, and why it
    is stopping, if it is."""

    task_id: str
    workflow: str
    owner: str
    claim: Claim
    stopping: str | None


class Run:
    """The handling of one claim, from loading the record to settling the task."""

    def __init__(self, env: RunEnv, wf: Workflow, claim: Claim) -> None:
        self.env = env
        self.backend = env.backend
        self.observer = env.observer
        self.wf = wf
        self.owner = f"{env.worker_id}/{next(env.run_tokens)}"
        self.task: Task | None = None
        self.step: str | None = None  # the step (or compensation) called last
        self.recording: TaskError | None = None  # a step failure being written
        # Nothing this run holds refers back to it (its log fields go through a weak
        # reference, the heartbeat's callbacks to the caller only), so a finished run is
        # freed at once, not left with its task, claim and coroutine for the cycle collector;
        # nor do contexts copied from the run's task (by its timers) keep it.
        self.fields = _fields_of(weakref.ref(self))
        self.log = TaskLog(env.log, self.fields)
        self.caller = caller = StepCaller(env.threads, env.observer)
        self.heartbeat = Heartbeat(
            env.backend,
            env.backend,
            claim,
            lease=env.lease,
            owner=self.owner,
            on_lost=functools.partial(caller.interrupt, "lost"),
            on_cancel=functools.partial(caller.interrupt, "cancelled"),
            log=self.log,
        )
        self.compensating = False

    @property
    def claim(self) -> Claim:
        """The current lease (the heartbeat renews it)."""
        return self.heartbeat.claim

    def start(self) -> asyncio.Task[None]:
        """Handle the claim in a task of its own; returns it."""
        handler = asyncio.get_running_loop().create_task(self.handle())
        self.caller.handler = handler
        return handler

    def interrupt(self, reason: str) -> None:
        """Stop the running step (if any) for `reason`; the run then acts on it."""
        self.caller.interrupt(reason)

    def log_fields(self) -> dict[str, Any]:
        """What every log record about this run's task carries: the step it is at and the
        attempt as stored (None before the record is read)."""
        task = self.task
        return {
            "task_id": self.heartbeat.claim.task_id,
            "workflow": self.wf.name,
            "step": self.step,
            "attempt": None if task is None else task.attempt,
        }

    def snapshot(self) -> ActiveRun:
        claim = self.claim
        return ActiveRun(claim.task_id, self.wf.name, self.owner, claim, self.caller.stop_reason)

    # -- the outline ---------------------------------------------------------------------------

    async def handle(self) -> None:
        reporting = run_fields.set(self.fields)  # for the hooks given only a claim
        try:
            task = await self._load()
            if task is not None:
                await self._drive(task)
        except _Finished:
            # Cancelled, or finished through another claim, after this claim was made (a
            # backend may hand out the task with its claim): as for a claim whose record
            # is finished already, the claim is done.
            await self._ack()
        except ConflictError as exc:
            gone = exc.actual_version is None
            self.observer.lease_lost(
                self.claim,
                detail=(
                    "its record is gone (discarded, purged, or lost by the backend)"
                    if gone
                    else "another worker owns it now (ConflictError)"
                ),
                fenced=not gone,
            )
        except LeaseLostError:
            detail = self.heartbeat.lost or "another worker owns it now (LeaseLostError)"
            self.observer.lease_lost(self.claim, detail=detail, fenced=False)
        except Exception as exc:
            if getattr(exc, "retryable", False) or isinstance(exc, (OSError, asyncio.TimeoutError)):
                self.observer.run_failed(self.claim, exc, recorded=False)
            else:
                await self._internal_error(exc)
        finally:
            beat = self.heartbeat.stop()
            if beat is not None:
                await asyncio.gather(beat, return_exceptions=True)
            run_fields.reset(reporting)

    async def _internal_error(self, exc: Exception) -> None:
        """A fault of salvador's own (or a backend's answer it cannot use): report it with
        its cause and, if this run owns the task, record it as the task's failure, so that
        it is visible and never passed off as a lost worker."""
        task = self.task
        owned = task is not None and task.owner == self.owner
        if task is None or not owned:
            self.observer.run_failed(self.claim, exc, recorded=False)
            return
        cause = TaskError.from_exception(exc, step=None, attempt=task.attempt)
        error = TaskError(
            type="salvador.InternalError",
            message=f"salvador could not go on with this task: {cause.type}: {cause.message}",
            step=None,
            attempt=task.attempt,
            traceback=cause.traceback,
        )
        # The step failure that was being written when this happened, if any: kept in the
        # record's failures, unless it is what the backend refused (then written without it).
        recording = self.recording
        attempts = [task] if recording is None else [task.evolve(failures=(*task.failures, recording)), task]
        try:
            for i, attempt in enumerate(attempts):
                try:
                    await self._settle(
                        attempt, TaskStatus.FAILED, error=error, dead_letter=DeadLetter.INTERNAL_ERROR
                    )
                    break
                except ConflictError:
                    raise
                except Exception:
                    if i + 1 == len(attempts):
                        raise
        except Exception as again:
            self.observer.run_failed(self.claim, exc, recorded=False)
            self.log.error(
                "task %s: could not record the internal error either (%s: %s)",
                task.id,
                type(again).__name__,
                again,
            )
            return
        self.observer.run_failed(self.claim, exc, recorded=True)

    async def _load(self) -> Task | None:
        """The claimed task, or None when there is nothing to run (handled here)."""
        claim, backend = self.claim, self.backend
        try:
            task = claim.task or await backend.get(claim.task_id)
        except CorruptRecordError as exc:
            self.observer.record_unreadable(claim, exc)
            stand_in = quarantine_task(claim.task_id, claim.workflow, exc.raw, exc.reason)
            await backend.quarantine(stand_in)
            await self._ack()
            return None
        except RecordVersionError as exc:
            self.observer.record_unreadable(claim, exc)
            await backend.release(claim, delay=self.env.lease)
            return None
        if task is None or task.status.terminal:
            await self._ack()  # discarded, or finished by a worker that died before its ack
            return None
        if task.status is TaskStatus.PENDING and task.not_before is not None:
            early = (task.not_before - utcnow()).total_seconds()
            if early > 0:
                # A retry whose worker died between its write and its release(delay) comes
                # back when the lease expires; its due time, not the lease, decides when it runs.
                await backend.release(claim, delay=early)
                return None
        return task

    async def _drive(self, task: Task) -> None:
        """Take ownership, then run steps or compensations until the task settles."""
        wf = self.wf
        if task.workflow != wf.name:
            # Written back under the workflow it is stored and queued under (backends may
            # place records by workflow); the name it claimed is kept in the error.
            await self._dead_letter(
                task.evolve(workflow=wf.name),
                DeadLetter.UNKNOWN_WORKFLOW,
                _engine_error(
                    "UnknownWorkflow",
                    f"record names workflow {task.workflow!r} but was queued for {wf.name!r}",
                ),
            )
            return
        done = {s.name for s in wf.steps[: task.step]}
        # An unfinished task always has a step left to run; if the workflow no longer has
        # one, it lost steps since the task started.
        if task.step >= len(wf.steps) or set(task.results) != done:
            await self._dead_letter(
                task,
                DeadLetter.WORKFLOW_CHANGED,
                _engine_error(
                    "WorkflowChanged",
                    f"task completed steps {sorted(task.results)} but workflow "
                    f"{wf.name!r} now starts with {[s.name for s in wf.steps[: task.step]]}; "
                    "requeue it with from_step=0 to start over",
                ),
            )
            return
        lost = task.status in (TaskStatus.RUNNING, TaskStatus.COMPENSATING)
        compensating = task.status is TaskStatus.COMPENSATING
        limit = COMPENSATION_MAX_ATTEMPTS
        if not compensating and task.step < len(wf.steps):
            limit = wf.retry_for(wf.steps[task.step]).max_attempts
        if lost and task.attempt >= limit:
            step = wf.steps[min(task.step, len(wf.steps) - 1)].name
            error = _engine_error(
                "WorkerLost",
                f"the worker running {'compensations' if compensating else repr(step)} died or "
                f"lost its lease {task.attempt} time(s), the limit; not retrying it again",
                step=step,
                attempt=task.attempt,
            )
            if compensating:
                await self._dead_letter(task, DeadLetter.WORKER_LOST, error)
            else:
                await self._give_up(task, error, DeadLetter.WORKER_LOST)
            return
        if lost:
            where = (
                "its compensations"
                if compensating
                else f"step {task.step + 1} ({wf.steps[task.step].name!r})"
            )
            self.observer.resumed(task, where=where)
        status = TaskStatus.COMPENSATING if compensating else TaskStatus.RUNNING
        task = await self._write(
            task.evolve(status=status, attempt=task.attempt + 1, owner=self.owner, not_before=None)
        )
        # From here on this run owns the task: keep the lease alive and watch for a takeover.
        self.heartbeat.start()
        if task.status is TaskStatus.COMPENSATING:
            await self._compensate(task)
        elif task.cancel_requested:
            await self._give_up(task, _cancel_error(task), None)
        else:
            await self._run_steps(task)

    async def _run_steps(self, task: Task) -> None:
        wf, observer, caller = self.wf, self.observer, self.caller
        # Steps are timed and reported only to an observer that does something with them.
        watched = watches_steps(observer)
        started: float | None = None
        while True:
            step = wf.steps[task.step]
            ctx = self._context(task, step.name)
            if watched:
                observer.step_started(task, step.name, compensation=False)
                started = time.perf_counter()
            try:
                value = await caller.call(step.fn, ctx, wf.timeout_for(step), step.fn_is_async)
                result = self._checked_result(step, value)
            except Interrupted as stop:
                if started is not None:
                    observer.step_finished(
                        task, step.name, compensation=False, seconds=time.perf_counter() - started, error=stop
                    )
                await self._interrupted(task, stop.reason)
                return
            except StepFailed as failed:
                await self._step_failed(task, step, failed.error, started)
                return
            except StepTimeoutError as exc:
                await self._step_failed(task, step, exc, started)
                return
            except (StepResultError, PayloadTooLargeError) as exc:
                # The result is refused before anything is written; it would be refused
                # again on every attempt.
                await self._step_failed(task, step, exc, started, permanent=True)
                return
            if started is not None:
                observer.step_finished(
                    task, step.name, compensation=False, seconds=time.perf_counter() - started, error=None
                )
            last = task.step + 1 == len(wf.steps)
            task = await self._write(
                final=last,
                task=task.evolve(
                    results={**task.results, step.name: result},
                    step=task.step + 1,
                    attempt=task.attempt if last else 1,
                    failures=(),
                    error=None,
                    status=TaskStatus.COMPLETED if last else TaskStatus.RUNNING,
                    owner=None if last else self.owner,
                ),
            )
            if last:
                self.observer.settled(task)
                return
            if task.cancel_requested:
                await self._give_up(task, _cancel_error(task), None)
                return

    # -- steps ---------------------------------------------------------------------------------

    def _context(self, task: Task, step: str, **extra: Any) -> StepContext:
        self.task = task
        self.step = step
        return StepContext(
            task,
            step,
            logger=self.env.log,
            heartbeat=self.heartbeat.request,
            cancel=self.caller.fresh_flag(),
            **extra,
        )

    def _checked_result(self, step: Step, value: Any) -> Any:
        """`value` as it will read back from the store; raises before anything is written."""
        what = f"the result of step {step.name!r}"
        data = _NULL if value is None else dump_json(value, what=what)
        check_size(what, data, self.env.max_payload_bytes)
        if value is None or type(value) in _READ_BACK_UNCHANGED:
            return value  # decoding `data` would give an equal value back
        return json.loads(data)

    async def _step_failed(
        self, task: Task, step: Step, exc: BaseException, started: float | None, *, permanent: bool = False
    ) -> None:
        """Record a failed attempt: retry it as the step's policy says, or give up. Whatever
        the step's own code raised (a `SalvadorError` from a call it made included) follows
        the policy; `permanent` is for what the engine refused and would refuse again.
        `started`: when the step was called, None when the observer does not watch steps."""
        if started is not None:
            self.observer.step_finished(
                task, step.name, compensation=False, seconds=time.perf_counter() - started, error=exc
            )
        error = TaskError.from_exception(exc, step=step.name, attempt=task.attempt)
        self.recording = error  # kept by an internal error if writing it fails
        policy = self.wf.retry_for(step)
        if not permanent and policy.should_retry(exc, task.attempt):
            delay = policy.delay(task.attempt)
            task = await self._write(
                task.evolve(
                    status=TaskStatus.PENDING,
                    error=error,
                    failures=(*task.failures, error),
                    not_before=utcnow() + timedelta(seconds=delay),
                    owner=None,
                )
            )
            self.heartbeat.finish()
            await self.backend.release(self.claim, delay=delay)
            self.observer.retry_scheduled(task, step.name, delay=delay, error=error)
            return
        await self._give_up(task.evolve(failures=(*task.failures, error)), error, DeadLetter.STEP_FAILED)

    async def _interrupted(self, task: Task, reason: str) -> None:
        if reason == "lost":
            raise LeaseLostError(task.id, "the heartbeat found another owner")
        if reason == "shutdown":
            task = self.task or task
            task = await self._write(
                task.evolve(
                    status=TaskStatus.COMPENSATING if self.compensating else TaskStatus.PENDING,
                    attempt=max(0, task.attempt - 1),  # shutting down is not the step's fault
                    owner=None,
                )
            )
            self.heartbeat.finish()
            await self.backend.release(self.claim)
            self.observer.released(task, reason="shutdown")
            return
        await self._give_up(task, _cancel_error(task), None)

    # -- failure for good: compensate, then settle -----------------------------------------------

    async def _give_up(self, task: Task, error: TaskError, reason: DeadLetter | None) -> None:
        """The task cannot go on (failed for good, lost too often, or cancelled): undo the
        completed steps that have compensations, then settle. `reason` None = cancelled."""
        cancelled = reason is None
        if not any(s.compensate for s in self.wf.steps[: task.step]):
            if reason is None:
                await self._settle(task, TaskStatus.CANCELLED, error=error)
            else:
                await self._dead_letter(task, reason, error)
            return
        task = await self._write(
            task.evolve(
                status=TaskStatus.COMPENSATING,
                error=error,
                dead_letter=reason,
                cancel_requested=cancelled or task.cancel_requested,
                compensated=(),
                attempt=1,
            )
        )
        if reason is not None:
            self.observer.dead_lettered(task, reason, error)  # once written, as in _dead_letter
        await self._compensate(task)

    async def _compensate(self, task: Task) -> None:
        """Run the compensations not yet done, newest step first, checkpointing each."""
        self.compensating = True
        self.heartbeat.watch_cancel = False  # compensations run even though the task was cancelled
        if self.caller.stop_reason == "cancelled":
            self.caller.stop_reason = None
        for step in reversed(self.wf.steps[: task.step]):
            if step.compensate is None or step.name in task.compensated:
                continue
            ctx = self._context(
                task, step.name, error=task.error, result=task.results.get(step.name), compensation=True
            )
            self.observer.step_started(task, step.name, compensation=True)
            started = time.perf_counter()
            try:
                await self.caller.call(
                    step.compensate, ctx, self.wf.timeout_for(step), step.compensate_is_async
                )
            except Interrupted as stop:
                self.observer.step_finished(
                    task, step.name, compensation=True, seconds=time.perf_counter() - started, error=stop
                )
                await self._interrupted(task, stop.reason)
                return
            except (StepFailed, StepTimeoutError) as failed:
                exc = failed.error if isinstance(failed, StepFailed) else failed
                self.observer.step_finished(
                    task, step.name, compensation=True, seconds=time.perf_counter() - started, error=exc
                )
                error = TaskError.from_exception(exc, step=step.name, attempt=task.attempt)
                # The failure that started the rollback moves to `failures`, after the
                # earlier attempts of its step already there.
                earlier = task.failures
                if task.error is not None and task.error not in earlier:
                    earlier = (*earlier, task.error)
                await self._dead_letter(task.evolve(failures=earlier), DeadLetter.COMPENSATION_FAILED, error)
                return
            self.observer.step_finished(
                task, step.name, compensation=True, seconds=time.perf_counter() - started, error=None
            )
            task = await self._write(task.evolve(compensated=(*task.compensated, step.name)))
        final = TaskStatus.CANCELLED if task.cancel_requested else TaskStatus.COMPENSATED
        await self._settle(task, final, error=task.error, dead_letter=_reason(task.dead_letter))

    async def _dead_letter(self, task: Task, reason: DeadLetter, error: TaskError) -> None:
        """Settle `task` as failed for `reason`, reported once written: if the write fails,
        the record ends `internal-error` instead, and the log says so, not `reason`."""
        stored = await self._write(
            task.evolve(status=TaskStatus.FAILED, error=error, dead_letter=reason, owner=None), final=True
        )
        self.observer.dead_lettered(stored, reason, error)
        self.observer.settled(stored)

    async def _settle(
        self,
        task: Task,
        status: TaskStatus,
        *,
        error: TaskError | None,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        stored = await self._write(
            task.evolve(status=status, error=error, dead_letter=dead_letter, owner=None), final=True
        )
        self.observer.settled(stored)

    # -- fenced writes -------------------------------------------------------------------------

    async def _write(self, task: Task, *, final: bool = False) -> Task:
        """CAS `task` over the version it was read at; a `final` write also acks the claim,
        in one round trip where the backend can (or writes alone when the lease was lost;
        the new holder then acks the terminal task on sight).

        A conflict is a takeover unless the stored task still names this run as owner: then
        only a cancel request was written meanwhile, which is merged and the write retried.
        """
        if final:
            self.heartbeat.finish()
        try:
            stored = await self._cas(task, task.version, final)
        except ConflictError:
            current = await self.backend.get(task.id)
            if current is None or current.owner != self.owner:
                if self.task is None and current is not None and current.status.terminal:
                    raise _Finished from None  # before this run's first write: nothing to do
                raise
            stored = await self._cas(
                task.evolve(cancel_requested=current.cancel_requested), current.version, final
            )
        self.task = stored
        self.recording = None  # any step failure being written is in `stored` now
        return stored

    def _cas(self, task: Task, expected_version: int, final: bool) -> Awaitable[Task]:
        """The backend's fenced write of `task` (a `final` one also acks the claim); the
        backend's own coroutine, not one more around it."""
        if final:
            return self.backend.settle(task, expected_version, self.claim)
        return self.backend.update(task, expected_version)

    async def _ack(self) -> None:
        try:
            await self.backend.ack(self.claim)
        except LeaseLostError:
            # The record is already settled; whoever holds the new lease acks it on sight.
            self.log.debug("task %s: ack after lease loss ignored", self.claim.task_id)


# -- helpers ---------------------------------------------------------------------------------


def _fields_of(run: weakref.ref[Run]) -> Callable[[], dict[str, Any]]:
    """`Run.log_fields` of the run `run` refers to, without keeping that run alive."""

    def fields() -> dict[str, Any]:
        alive = run()
        return {} if alive is None else alive.log_fields()

    return fields


class _Finished(Exception):
    """The task was finished by someone else before this run's first write landed."""


def _reason(value: object) -> DeadLetter | None:
    return value if isinstance(value, DeadLetter) or value is None else DeadLetter(value)


def _engine_error(kind: str, message: str, *, step: str | None = None, attempt: int = 0) -> TaskError:
    return TaskError(type=f"salvador.{kind}", message=message, step=step, attempt=attempt)


def _cancel_error(task: Task) -> TaskError:
    return TaskError(
        type=f"{StepCancelledError.__module__}.{StepCancelledError.__qualname__}",
        message="the task was cancelled",
        step=None,
        attempt=task.attempt,
    )


__all__ = ["COMPENSATION_MAX_ATTEMPTS", "ActiveRun", "Run", "RunEnv", "StepFn"]
