"""The engine: submits tasks and runs workflows' steps, talking only to the protocols.

One claimed task is handled by one `_Run`: load the record, take ownership with a fenced
write, run the remaining steps (checkpointing each), and settle the task. A `ConflictError`
or `LeaseLostError` anywhere means another worker owns the task now; the run stops
touching it at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import logging
import math
import os
import queue as queue_module
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, cast

from salvador_core.config import connect
from salvador_core.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    CorruptRecordError,
    InvalidStateError,
    LeaseLostError,
    PayloadTooLargeError,
    SalvadorError,
    StepCancelledError,
    StepResultError,
    StepTimeoutError,
    TaskNotFoundError,
    UnknownWorkflowError,
)
from salvador_core.protocols import Backend, TaskQueue, TaskStore
from salvador_core.task import (
    DEAD_LETTER_STATUSES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    TERMINAL_STATUSES,
    Claim,
    Page,
    RecordVersionError,
    Task,
    TaskError,
    TaskStatus,
    check_size,
    dump_json,
    new_task_id,
    purge_statuses,
    quarantine_task,
    utcnow,
)
from salvador_core.workflow import CancelFlag, Step, StepContext, StepFn, Workflow, is_async

log = logging.getLogger("salvador")

#: How many claim loops one workflow gets at most; more only add idle connections.
MAX_CLAIMERS_PER_WORKFLOW = 4

#: How many workers may die while compensating one task before it is dead-lettered
#: (`worker_lost`). Independent of the steps' retry policies: a saga whose steps must not
#: be retried still has to be rolled back.
COMPENSATION_MAX_ATTEMPTS = 5


#: The JSON of a step that returns None (most do): no need to run the encoder for it.
_NULL = b"null"
#: Result types that read back from JSON as an equal value of the same type, once
#: `dump_json` has accepted them (it refuses NaN, infinities and unencodable strings).
#: Exact types: subclasses such as enums read back as their plain base type.
_READ_BACK_UNCHANGED = frozenset({str, int, float, bool})


class _Interrupted(Exception):
    """A running step was stopped from outside: reason is 'cancelled', 'lost' or 'shutdown'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _StepFailed(Exception):
    """Whatever a step or compensation function raised, `BaseException`s included, carried
    out of the call as an ordinary exception: `SystemExit` from `sys.exit()` or argparse in a
    step, or `KeyboardInterrupt`, escaping an asyncio task would stop the event loop and with
    it every other task of the worker. It is that task's step failure, nothing more."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(_describe(error))
        self.error = error


class _StepThreads:
    """The threads sync steps run in: daemon threads, started on demand, reused when idle.

    Daemon, because a sync step cannot be stopped from outside: one that ignores
    cancellation must not keep a drained worker process alive (a `ThreadPoolExecutor`'s
    threads are joined at interpreter exit). On demand, because a thread whose step overran
    its timeout is abandoned, still running: a fixed pool would fill with those and starve
    the steps of every other workflow. Abandoned threads are counted and logged.
    """

    #: An idle thread waits this long for work before it ends.
    IDLE_SECONDS = 60.0

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._jobs: queue_module.SimpleQueue[Callable[[], None] | None] = queue_module.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._busy: set[asyncio.Future[Any]] = set()  # calls whose function is running
        self._abandoned: set[asyncio.Future[Any]] = set()  # ... that nobody waits for

    @property
    def abandoned(self) -> int:
        """Threads still running a step that was given up on (timed out, or stopped)."""
        return len(self._abandoned)

    def call(self, fn: StepFn, ctx: StepContext) -> asyncio.Future[Any]:
        """Run `fn(ctx)` in a thread; the future resolves on the loop, with `_StepFailed`
        for whatever the call raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()

        def job() -> None:
            try:
                outcome: tuple[bool, Any] = (True, context.run(fn, ctx))
            except BaseException as exc:  # reported as the step's failure, whatever it is
                outcome = (False, _StepFailed(exc))
            with self._lock:
                self._busy.discard(future)
                if future in self._abandoned:
                    self._abandoned.discard(future)
                    left = len(self._abandoned)
                    self._log.info("an abandoned step thread finished (%d still running)", left)
            try:
                loop.call_soon_threadsafe(_resolve, future, outcome)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting for this result any more

        with self._lock:
            self._busy.add(future)
            start = self._idle == 0
            if start:
                self._threads += 1
            else:
                self._idle -= 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._serve, name=f"salvador-step-{self._threads}", daemon=True).start()
        return future

    def abandon(self, future: asyncio.Future[Any], what: str) -> None:
        """The call behind `future` goes on running in its thread though nobody waits for
        it any more; logged with how many such threads this process has."""
        with self._lock:
            if future not in self._busy:
                return  # it finished meanwhile
            self._abandoned.add(future)
            count = len(self._abandoned)
        self._log.warning(
            "%s; its thread is abandoned, still running (%d abandoned step thread(s) in this "
            "process); make the step poll ctx.cancelled to stop it", what, count,
        )

    def stop(self) -> None:
        """Let idle threads end; busy ones end with their step or with the process."""
        with self._lock:
            idle = self._idle
        for _ in range(idle):
            self._jobs.put(None)

    def _serve(self) -> None:
        while True:
            job: Callable[[], None] | None = None
            try:
                job = self._jobs.get(timeout=self.IDLE_SECONDS)
            except queue_module.Empty:
                job = None
            if job is None:
                # Idle too long, or told to stop. `_idle` counts this thread unless a call
                # reserved it meanwhile (then its job is queued: stay and take it).
                with self._lock:
                    if self._idle > 0:
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            job()
            with self._lock:
                self._idle += 1


def _resolve(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class Engine:
    """Submits tasks and runs registered workflows against a store and a queue.

    `concurrency` is how many tasks of each workflow this process runs at once. `lease` is
    how long a claim lasts without a heartbeat (heartbeats run every lease/3), so a dead
    worker's task is re-delivered after at most `lease` seconds. `poll_interval` bounds
    each claim wait (waiting itself does not poll where the backend can wake workers).
    `drain_timeout` is how long shutdown lets running steps finish before interrupting
    them and releasing their tasks. `retention`, when set, purges terminal tasks older
    than that many seconds.
    """

    def __init__(
        self,
        store: TaskStore,
        queue: TaskQueue | None = None,
        *,
        workflows: Iterable[Workflow] = (),
        concurrency: int = 1,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        drain_timeout: float = 30.0,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        retention: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
        if lease <= 0 or poll_interval <= 0 or drain_timeout < 0:
            raise ConfigurationError("lease and poll_interval must be > 0, drain_timeout >= 0")
        if queue is None:
            if not isinstance(store, TaskQueue):
                raise ConfigurationError(
                    f"{type(store).__name__} is only a store; pass a queue too: "
                    "Engine(store, queue)"
                )
            queue = store
        self.store = store
        self.queue = queue
        self.concurrency = concurrency
        self.lease = lease
        self.poll_interval = poll_interval
        self.drain_timeout = drain_timeout
        self.retention = retention
        self.log = logger or log
        backend_limit = getattr(store, "max_payload_bytes", None)
        self.max_payload_bytes = min(max_payload_bytes, backend_limit or max_payload_bytes)
        # One backend holding both halves makes submit and requeue atomic.
        self._split = cast(object, queue) is not store
        self._atomic: Backend | None = (
            store if not self._split and isinstance(store, Backend) else None
        )
        self._workflows: dict[str, Workflow] = {}
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._opened = 0
        self._stopping = asyncio.Event()
        self._runs: set[_Run] = set()
        self._threads = _StepThreads(self.log)
        # Claim loops now waiting for a slot or for a task: stopping cancels them at once.
        self._waiting_claimers: set[asyncio.Task[Any]] = set()
        for wf in workflows:
            self.register(wf)

    @classmethod
    def from_url(cls, url: str | None = None, **options: Any) -> Engine:
        """An engine on the backend at `url`, or `$SALVADOR_URL`, or the pair
        `$SALVADOR_STORE_URL` + `$SALVADOR_QUEUE_URL`. `options` go to `Engine(...)`."""
        if url is None and not os.environ.get("SALVADOR_URL"):
            store_url = os.environ.get("SALVADOR_STORE_URL")
            queue_url = os.environ.get("SALVADOR_QUEUE_URL")
            if store_url and queue_url:
                return cls(connect(store_url), connect(queue_url), **options)
        return cls(connect(url), **options)

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect the backend(s). `async with engine` does this for you."""
        if self._opened == 0:
            await self.store.open()
            if self._split:
                await self.queue.open()
        self._opened += 1

    async def close(self) -> None:
        if self._opened == 0:
            return
        self._opened -= 1
        if self._opened == 0:
            if self._split:
                await self.queue.close()
            await self.store.close()

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def register(self, workflow: Workflow) -> Workflow:
        """Make `workflow` known to this engine, for submitting and for running."""
        if not isinstance(workflow, Workflow):
            raise TypeError(f"register() takes a Workflow, got {type(workflow).__name__}")
        if not workflow.steps:
            raise ConfigurationError(f"workflow {workflow.name!r} has no steps; add one first")
        existing = self._workflows.get(workflow.name)
        if existing is not None and existing is not workflow:
            raise ConfigurationError(f"another workflow named {workflow.name!r} is registered")
        self._workflows[workflow.name] = workflow
        return workflow

    @property
    def workflows(self) -> dict[str, Workflow]:
        return dict(self._workflows)

    # -- producing and inspecting --------------------------------------------------------

    async def submit(
        self,
        workflow: str | Workflow,
        body: Any = b"",
        *,
        idempotency_key: str | None = None,
        meta: dict[str, str] | None = None,
        delay: float | timedelta | None = None,
        not_before: datetime | None = None,
    ) -> str:
        """Store a new task and queue it; returns its id once it is durable.

        `body` is bytes, a str (stored as UTF-8) or any JSON value. A repeated
        `idempotency_key` for the same workflow returns the first task's id and creates
        nothing. `delay` (seconds) or `not_before` hold delivery back until then.
        """
        name = workflow.name if isinstance(workflow, Workflow) else workflow
        if name not in self._workflows:
            raise UnknownWorkflowError(name, list(self._workflows))
        data = _body_bytes(body)
        check_size(f"the body of a {name!r} task", data, self.max_payload_bytes)
        _check_key(idempotency_key)
        _check_meta(meta)
        if delay is not None and not_before is not None:
            raise ValueError("pass delay or not_before, not both")
        if delay is not None:
            seconds = _delay_seconds(delay)
            not_before = utcnow() + timedelta(seconds=seconds) if seconds > 0 else None
        if not_before is not None and (
            not isinstance(not_before, datetime) or not_before.tzinfo is None
        ):
            raise ValueError(
                f"not_before must be a timezone-aware datetime (e.g. datetime.now(timezone.utc)), "
                f"got {not_before!r}"
            )
        task = Task(
            id=new_task_id(),
            workflow=name,
            body=data,
            meta=dict(meta or {}),
            idempotency_key=idempotency_key,
            not_before=not_before,
        )
        if self._atomic is not None:
            stored = await self._atomic.submit(task)
        else:
            stored = await self.store.create(task)
            if stored.id == task.id:
                # A crash right here leaves a pending task that is not queued; the
                # maintenance loop's repair pass finds and queues it.
                await self.queue.enqueue(name, task.id, not_before=not_before)
        return stored.id

    async def get_task(self, task_id: str) -> Task | None:
        """The task as stored now, or None if there is no such task."""
        return await self.store.get(task_id)

    async def list_tasks(
        self,
        *,
        workflow: str | None = None,
        status: TaskStatus | Iterable[TaskStatus] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """One page of tasks, oldest first; pass `page.cursor` back for the next."""
        return await self.store.list(workflow=workflow, status=status, limit=limit, cursor=cursor)

    async def dead_letters(
        self, workflow: str | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        """Tasks that failed for good (`failed` or `compensated`), each with its reason in
        `task.dead_letter` and the error in `task.error`."""
        return await self.store.list(
            workflow=workflow, status=DEAD_LETTER_STATUSES, limit=limit, cursor=cursor
        )

    async def requeue(self, task_id: str, *, from_step: int | str | None = None) -> Task:
        """Run a failed, compensated or cancelled task again.

        By default it resumes at the step that failed, keeping earlier results; if
        compensations already undid earlier steps it starts over. `from_step` (an index or
        a step name) chooses where to restart; results from that step on are dropped.
        """
        task = await self._get_existing(task_id)
        if task.status not in DEAD_LETTER_STATUSES | {TaskStatus.CANCELLED}:
            raise InvalidStateError(
                f"task {task_id} is {task.status.value}; only failed, compensated or "
                "cancelled tasks can be requeued"
            )
        if task.dead_letter == "corrupt-record":
            raise InvalidStateError(
                f"task {task_id} is a quarantined corrupt record (its raw bytes are its body); "
                "submit a new task instead"
            )
        wf = self._workflows.get(task.workflow)
        if wf is None:
            raise UnknownWorkflowError(task.workflow, list(self._workflows))
        index = _step_index(wf, from_step, default=0 if task.compensated else task.step)
        kept = [s.name for s in wf.steps[:index]]
        missing = [n for n in kept if n not in task.results]
        if missing:
            raise InvalidStateError(
                f"cannot restart task {task_id} at step {index}: steps {missing} have no saved "
                "result; choose an earlier from_step"
            )
        fresh = task.evolve(
            status=TaskStatus.PENDING,
            step=index,
            results={n: task.results[n] for n in kept},
            attempt=0,
            error=None,
            failures=(),
            dead_letter=None,
            compensated=(),
            cancel_requested=False,
            owner=None,
            not_before=None,
        )
        if self._atomic is not None:
            return await self._atomic.requeue(fresh, task.version)
        stored = await self.store.update(fresh, task.version)
        await self.queue.enqueue(stored.workflow, stored.id)
        return stored

    async def discard(self, task_id: str) -> bool:
        """Delete a finished (terminal) task for good. False if it did not exist."""
        task = await self.store.get(task_id)
        if task is None:
            return False
        if not task.status.terminal:
            raise InvalidStateError(
                f"task {task_id} is {task.status.value}; cancel it first, then discard it"
            )
        return await self.store.delete(task_id)

    async def cancel(self, task_id: str) -> Task:
        """Cancel a task. A pending task never runs its next step; a running one is
        interrupted at its next heartbeat. Completed steps are compensated where the
        workflow says how. Finished tasks are left as they are. Returns the task."""
        for _ in range(50):
            task = await self._get_existing(task_id)
            if task.status.terminal or task.cancel_requested:
                return task
            wf = self._workflows.get(task.workflow)
            needs_worker = task.status in (TaskStatus.RUNNING, TaskStatus.COMPENSATING) or (
                wf is not None and any(s.compensate for s in wf.steps[: task.step])
            )
            if needs_worker:
                change = task.evolve(cancel_requested=True)
            else:
                change = task.evolve(
                    status=TaskStatus.CANCELLED,
                    error=_cancel_error(task),
                    not_before=None,
                    cancel_requested=True,
                )
            try:
                return await self.store.update(change, task.version)
            except ConflictError:
                continue  # a worker wrote meanwhile; look again
        raise SalvadorError(f"task {task_id} kept changing; cancel() gave up after 50 tries")

    async def purge(
        self,
        older_than: float | timedelta | datetime,
        statuses: Iterable[TaskStatus] = TERMINAL_STATUSES,
    ) -> int:
        """Delete terminal tasks last updated before `older_than` (a datetime, or an age in
        seconds or as a timedelta). Returns how many were deleted."""
        if isinstance(older_than, datetime):
            cutoff = older_than
        else:
            age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
            cutoff = utcnow() - age
        # Refused here, before the store is asked, so no backend can purge live tasks.
        return await self.store.purge(older_than=cutoff, statuses=purge_statuses(statuses))

    async def _get_existing(self, task_id: str) -> Task:
        task = await self.store.get(task_id)
        if task is None:
            raise TaskNotFoundError(task_id)
        return task

    # -- running -------------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True) -> None:
        """Claim and run tasks of every registered workflow until stopped.

        Cancelling this coroutine, SIGTERM or SIGINT (with `handle_signals`, in the main
        thread) drain gracefully: no new claims, running steps get `drain_timeout` to
        finish, the rest are interrupted and released so other workers resume them now.
        """
        if not self._workflows:
            raise ConfigurationError("no workflows registered; call engine.register(wf) first")
        await self.open()
        loop = asyncio.get_running_loop()
        signals = _install_signal_handlers(loop, self._stopping.set) if handle_signals else []
        claimers: list[asyncio.Task[None]] = []
        for wf in self._workflows.values():
            slots = asyncio.Semaphore(self.concurrency)
            for _ in range(min(self.concurrency, MAX_CLAIMERS_PER_WORKFLOW)):
                claimers.append(asyncio.create_task(self._claim_loop(wf, slots)))
        upkeep = asyncio.create_task(self._maintenance_loop())
        self.log.info(
            "worker %s running %s (concurrency %d, lease %.1fs)",
            self._worker_id, ", ".join(self._workflows), self.concurrency, self.lease,
        )
        try:
            await self._stopping.wait()
        finally:
            self._stopping.set()
            for sig in signals:
                loop.remove_signal_handler(sig)
            await asyncio.shield(self._drain(claimers, upkeep))
            # Armed afresh only once this run is over, so that a stop() issued before the
            # run got going is not lost, and the engine can be run again.
            self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask `run()` to drain and return; also when it was started but has not begun yet."""
        self._stopping.set()

    async def _drain(self, claimers: list[asyncio.Task[None]], upkeep: asyncio.Task[None]) -> None:
        upkeep.cancel()
        # A claimer waiting for a task or a slot holds nothing: stop it now, whatever
        # `poll_interval` is. (A task leased at this very instant comes back when its lease
        # expires, as if this worker had died.) The others are between a claim and its run.
        for t in self._waiting_claimers:
            t.cancel()
        _, late = await asyncio.wait(claimers, timeout=self.poll_interval + 1.0)
        for t in late:
            t.cancel()
        await asyncio.gather(*claimers, upkeep, return_exceptions=True)
        runs = [r.handler for r in self._runs if r.handler is not None]
        if runs:
            self.log.info("draining %d running task(s), up to %.1fs", len(runs), self.drain_timeout)
            _, pending = await asyncio.wait(runs, timeout=self.drain_timeout)
            for r in list(self._runs):
                r.interrupt("shutdown")
            if pending:
                await asyncio.wait(pending, timeout=max(self.lease / 3, 5.0))
        self._threads.stop()
        await self.close()
        self.log.info("worker %s stopped", self._worker_id)

    async def _claim_loop(self, wf: Workflow, slots: asyncio.Semaphore) -> None:
        failures = 0
        me = asyncio.current_task()
        assert me is not None
        waiting = self._waiting_claimers
        # Outer timeout: a dead connection must never hang a worker.
        limit = self.poll_interval + max(5.0, self.lease / 3)
        while not self._stopping.is_set():
            waiting.add(me)
            try:
                await slots.acquire()
            finally:
                waiting.discard(me)
            claim: Claim | None = None
            waiting.add(me)
            try:
                claim = await asyncio.wait_for(
                    self.queue.claim(wf.name, lease=self.lease, wait=self.poll_interval), timeout=limit
                )
                failures = 0
            except asyncio.CancelledError:
                slots.release()
                raise
            except asyncio.TimeoutError:
                failures += 1
                self.log.error(
                    "claiming %r failed: the backend did not answer within %.1fs; retrying in "
                    "%.1fs", wf.name, limit, _backoff(failures),
                )
                await _sleep_unless(self._stopping, _backoff(failures))
            except Exception as exc:
                failures += 1
                self.log.error(
                    "claiming %r failed (%s); retrying in %.1fs",
                    wf.name, _describe(exc), _backoff(failures),
                )
                await _sleep_unless(self._stopping, _backoff(failures))
            finally:
                waiting.discard(me)
            if claim is None or self._stopping.is_set():
                if claim is not None:
                    await _quietly(self.queue.release(claim), self.log)
                slots.release()
                continue
            run = _Run(self, wf, claim)
            self._runs.add(run)
            run.handler = asyncio.create_task(run.handle())
            run.handler.add_done_callback(functools.partial(self._finished, run, slots))

    def _finished(self, run: _Run, slots: asyncio.Semaphore, _: object) -> None:
        self._runs.discard(run)
        slots.release()

    async def _maintenance_loop(self) -> None:
        """Periodic upkeep: queue tasks a crash left unqueued (split store/queue only) and
        purge terminal tasks past `retention`."""
        interval = max(1.0, min(self.lease, 60.0))
        while True:
            await asyncio.sleep(interval)
            try:
                if self._atomic is None:
                    await self._requeue_orphans()
                if self.retention is not None:
                    purged = await self.purge(self.retention)
                    if purged:
                        self.log.info("retention: purged %d finished task(s)", purged)
            except Exception as exc:
                self.log.error("maintenance failed (%s); trying again later", _describe(exc))

    async def _requeue_orphans(self) -> None:
        cutoff = utcnow() - timedelta(seconds=self.lease)
        cursor = None
        while True:
            page = await self.store.list(status=TaskStatus.PENDING, limit=500, cursor=cursor)
            for task in page.tasks:
                if task.workflow in self._workflows and task.updated_at < cutoff:
                    await self.queue.enqueue(task.workflow, task.id, not_before=task.not_before)
            if page.cursor is None:
                return
            cursor = page.cursor



class _Run:
    """The handling of one claim, from loading the record to settling the task."""

    def __init__(self, engine: Engine, wf: Workflow, claim: Claim) -> None:
        self.engine = engine
        self.threads = engine._threads
        self.wf = wf
        self.claim = claim
        self.owner = f"{engine._worker_id}/{secrets.token_hex(4)}"
        self.task: Task | None = None
        self.handler: asyncio.Task[None] | None = None
        self.beat: asyncio.Task[None] | None = None  # the beat in flight
        self.beat_timer: asyncio.TimerHandle | None = None  # when the next beat is due
        self.beating = False  # from taking ownership until the run ends or the task is lost
        self.beat_again = False  # a beat was asked for while one was in flight
        self.stop_reason: str | None = None
        self.cancel = CancelFlag()  # the running call's; each call gets a fresh one
        self.step_future: asyncio.Future[Any] | None = None
        self.in_step = False  # an async step is being awaited in `handler` itself
        self.step_cancelled = False  # interrupt() cancelled `handler` to stop that step
        self.compensating = False
        self.log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(
            engine.log, {"task_id": claim.task_id, "workflow": wf.name}
        )

    # -- the outline --------------------------------------------------------------------

    async def handle(self) -> None:
        try:
            task = await self._load()
            if task is not None:
                await self._drive(task)
        except ConflictError as exc:
            if exc.actual_version is None:
                self.log.error(
                    "task %s: its record is gone (discarded, purged, or lost by the backend); "
                    "stopped working on it", self.claim.task_id,
                )
            else:
                self.log.warning(
                    "task %s: another worker owns it now (ConflictError); stopped working on it",
                    self.claim.task_id,
                )
        except LeaseLostError:
            self.log.warning(
                "task %s: another worker owns it now (LeaseLostError); stopped working on it",
                self.claim.task_id,
            )
        except (BackendUnavailableError, OSError, asyncio.TimeoutError) as exc:
            self.log.error(
                "task %s: backend failed (%s); its lease will expire and it will be retried",
                self.claim.task_id, _describe(exc),
            )
        except Exception as exc:
            await self._internal_error(exc)
        finally:
            beat = self._stop_heartbeat()
            if beat is not None:
                await asyncio.gather(beat, return_exceptions=True)

    async def _internal_error(self, exc: Exception) -> None:
        """A fault of salvador's own (or a backend's answer it cannot use): log it with its
        cause and, if this run owns the task, record it as the task's failure, so that it
        is visible and never passed off as a lost worker."""
        task = self.task
        owned = task is not None and task.owner == self.owner
        self.log.error(
            "task %s: internal error (%s)%s", self.claim.task_id, _describe(exc),
            "; recording it as the task's failure" if owned else "; its lease will expire",
            exc_info=exc,
        )
        if task is None or not owned:
            return
        error = TaskError.from_exception(exc, step=None, attempt=task.attempt)
        error = TaskError(
            type="salvador.InternalError",
            message=f"salvador could not go on with this task: {error.type}: {error.message}",
            step=None, attempt=task.attempt, traceback=error.traceback,
        )
        try:
            await self._settle(task, TaskStatus.FAILED, error=error, dead_letter="internal-error")
        except Exception as again:
            self.log.error(
                "task %s: could not record the internal error either (%s); its lease will "
                "expire and another worker will try it", task.id, _describe(again),
            )

    async def _load(self) -> Task | None:
        """The claimed task, or None when there is nothing to run (handled here)."""
        engine, claim = self.engine, self.claim
        try:
            task = claim.task or await engine.store.get(claim.task_id)
        except CorruptRecordError as exc:
            self.log.error("task %s: %s", claim.task_id, exc.reason)
            stand_in = quarantine_task(claim.task_id, claim.workflow, exc.raw, exc.reason)
            await engine.store.quarantine(stand_in)
            await self._ack()
            return None
        except RecordVersionError as exc:
            self.log.error("%s Leaving it for another worker.", exc)
            await engine.queue.release(claim, delay=engine.lease)
            return None
        if task is None or task.status.terminal:
            await self._ack()  # discarded, or finished by a worker that died before its ack
            return None
        if task.status is TaskStatus.PENDING and task.not_before is not None:
            early = (task.not_before - utcnow()).total_seconds()
            if early > 0:
                # A retry whose worker died between its write and its release(delay) comes
                # back when the lease expires; its due time, not the lease, decides when it runs.
                await engine.queue.release(claim, delay=early)
                return None
        return task

    async def _drive(self, task: Task) -> None:
        """Take ownership, then run steps or compensations until the task settles."""
        wf = self.wf
        if task.workflow != wf.name:
            # Written back under the workflow it is stored and queued under (backends may
            # place records by workflow); the name it claimed is kept in the error.
            await self._dead_letter(task.evolve(workflow=wf.name), "unknown-workflow", _engine_error(
                "UnknownWorkflow", f"record names workflow {task.workflow!r} but was queued "
                f"for {wf.name!r}"))
            return
        done = {s.name for s in wf.steps[: task.step]}
        # An unfinished task always has a step left to run; if the workflow no longer has
        # one, it lost steps since the task started.
        if task.step >= len(wf.steps) or set(task.results) != done:
            await self._dead_letter(task, "workflow-changed", _engine_error(
                "WorkflowChanged", f"task completed steps {sorted(task.results)} but workflow "
                f"{wf.name!r} now starts with {[s.name for s in wf.steps[: task.step]]}; "
                "requeue it with from_step=0 to start over"))
            return
        lost = task.status in (TaskStatus.RUNNING, TaskStatus.COMPENSATING)
        limit = COMPENSATION_MAX_ATTEMPTS
        if task.status is not TaskStatus.COMPENSATING and task.step < len(wf.steps):
            limit = wf.retry_for(wf.steps[task.step]).max_attempts
        if lost and task.attempt >= limit:
            step = wf.steps[min(task.step, len(wf.steps) - 1)].name
            compensating = task.status is TaskStatus.COMPENSATING
            error = _engine_error(
                "WorkerLost",
                f"the worker running {'compensations' if compensating else repr(step)} died or "
                f"lost its lease {task.attempt} time(s), the limit; not retrying it again",
                step=step, attempt=task.attempt,
            )
            if compensating:
                await self._settle(task, TaskStatus.FAILED, error=error, dead_letter="worker_lost")
            else:
                await self._give_up(task, error, "worker_lost")
            return
        if lost:
            where = (
                "its compensations" if task.status is TaskStatus.COMPENSATING
                else f"step {task.step + 1} ({wf.steps[task.step].name!r})"
            )
            self.log.warning(
                "task %s: resuming %s after a lost worker; the lost attempt was number %d",
                task.id, where, task.attempt,
            )
        status = TaskStatus.COMPENSATING if task.status is TaskStatus.COMPENSATING else TaskStatus.RUNNING
        task = await self._write(
            task.evolve(status=status, attempt=task.attempt + 1, owner=self.owner, not_before=None)
        )
        # From here on this run owns the task: keep the lease alive and watch for a takeover.
        self._start_heartbeat()
        if task.status is TaskStatus.COMPENSATING:
            await self._compensate(task)
        elif task.cancel_requested:
            await self._give_up(task, _cancel_error(task), None)
        else:
            await self._run_steps(task)

    async def _run_steps(self, task: Task) -> None:
        wf = self.wf
        while True:
            step = wf.steps[task.step]
            try:
                value = await self._call(step.fn, self._context(task, step.name), wf.timeout_for(step))
                result = self._checked_result(step, value)
            except _Interrupted as stop:
                await self._interrupted(task, stop.reason)
                return
            except _StepFailed as failed:
                await self._step_failed(task, step, failed.error)
                return
            except StepTimeoutError as exc:
                await self._step_failed(task, step, exc)
                return
            except (StepResultError, PayloadTooLargeError) as exc:
                # The result is refused before anything is written; it would be refused
                # again on every attempt.
                await self._step_failed(task, step, exc, permanent=True)
                return
            last = task.step + 1 == len(wf.steps)
            task = await self._write(final=last, task=task.evolve(
                results={**task.results, step.name: result},
                step=task.step + 1,
                attempt=task.attempt if last else 1,
                failures=(),
                error=None,
                status=TaskStatus.COMPLETED if last else TaskStatus.RUNNING,
                owner=None if last else self.owner,
            ))
            if last:
                return
            if task.cancel_requested:
                await self._give_up(task, _cancel_error(task), None)
                return

    # -- steps ---------------------------------------------------------------------------

    def _context(self, task: Task, step: str, **extra: Any) -> StepContext:
        self.task = task
        self.cancel = CancelFlag()
        return StepContext(
            task, step, logger=self.log, heartbeat=self._request_beat, cancel=self.cancel, **extra
        )

    async def _call(self, fn: StepFn, ctx: StepContext, timeout: float | None) -> Any:
        """Run a step or compensation function under `timeout`, interruptible from outside."""
        if self.stop_reason is not None:
            raise _Interrupted(self.stop_reason)
        run_async = is_async(fn)
        if run_async and not timeout:
            return await self._await_here(fn, ctx)
        if run_async:
            fut: asyncio.Future[Any] = asyncio.ensure_future(_contained(fn, ctx))
        else:
            fut = self.threads.call(fn, ctx)
        self.step_future = fut
        try:
            value = await asyncio.wait_for(fut, timeout) if timeout else await fut
            if inspect.isawaitable(value):
                value = await value
            return value
        except asyncio.TimeoutError:
            self.cancel.set()  # a sync step's thread cannot be killed; tell it to stop
            if not run_async:
                self.threads.abandon(
                    fut, f"task {ctx.task.id}: step {ctx.step!r} overran its {timeout:.1f}s timeout"
                )
            raise StepTimeoutError(
                f"step {ctx.step!r} did not finish within its timeout of {timeout}s"
            ) from None
        except asyncio.CancelledError:
            if self.stop_reason is not None:
                if not run_async:
                    self.threads.abandon(
                        fut, f"task {ctx.task.id}: step {ctx.step!r} was stopped ({self.stop_reason})"
                    )
                raise _Interrupted(self.stop_reason) from None
            if self._cancelling() or not fut.cancelled():
                raise  # this run itself is being cancelled
            # The step raised CancelledError of its own accord: its failure, not ours.
            raise _StepFailed(asyncio.CancelledError("the step raised CancelledError")) from None
        except _StepFailed:
            raise
        except BaseException as exc:
            # A sync function returning an awaitable: what awaiting it raised.
            raise _StepFailed(exc) from None
        finally:
            self.step_future = None

    async def _await_here(self, fn: StepFn, ctx: StepContext) -> Any:
        """An async function without a timeout, awaited in this run's own task rather than
        a task of its own (one per step was a large share of the engine's work per step).
        `interrupt()` cancels the run's task while `in_step` is set, which stops the step
        at its current await exactly as cancelling a task of its own would."""
        self.in_step = True
        try:
            value = await fn(ctx)
            if inspect.isawaitable(value):
                value = await value
            return value
        except asyncio.CancelledError as exc:
            if self.step_cancelled and self.stop_reason is not None:
                raise _Interrupted(self.stop_reason) from None
            if self.step_cancelled or self._cancelling():
                raise  # not our cancel: the run's task itself is being cancelled
            # The step raised CancelledError of its own accord: its failure, not ours.
            raise _StepFailed(exc) from None
        except BaseException as exc:
            raise _StepFailed(exc) from None
        finally:
            self.in_step = False
            if self.step_cancelled:
                self.step_cancelled = False
                # That cancel was meant for the step, not the run: withdraw it, so that
                # timeouts later in the run still tell their own cancels apart (3.11+).
                uncancel = getattr(self.handler, "uncancel", None)
                if uncancel is not None:
                    uncancel()

    def _cancelling(self) -> bool:
        """Whether this run's own task is being cancelled from outside (Python 3.11+ can
        tell; on 3.10 a CancelledError we did not cause is taken as the step's own)."""
        cancelling = getattr(self.handler, "cancelling", None)
        return bool(cancelling is not None and cancelling())

    def _checked_result(self, step: Step, value: Any) -> Any:
        """`value` as it will read back from the store; raises before anything is written."""
        what = f"the result of step {step.name!r}"
        data = _NULL if value is None else dump_json(value, what=what)
        check_size(what, data, self.engine.max_payload_bytes)
        if value is None or type(value) in _READ_BACK_UNCHANGED:
            return value  # decoding `data` would give an equal value back
        return json.loads(data)

    async def _step_failed(
        self, task: Task, step: Step, exc: BaseException, *, permanent: bool = False
    ) -> None:
        """Record a failed attempt: retry it as the step's policy says, or give up. Whatever
        the step's own code raised (a `SalvadorError` from a call it made included) follows
        the policy; `permanent` is for what the engine refused and would refuse again."""
        error = TaskError.from_exception(exc, step=step.name, attempt=task.attempt)
        policy = self.wf.retry_for(step)
        if not permanent and policy.should_retry(exc, task.attempt):
            delay = policy.delay(task.attempt)
            self.log.warning(
                "task %s: step %r attempt %d failed (%s: %s); retrying in %.2fs",
                task.id, step.name, task.attempt, type(exc).__name__, exc, delay,
            )
            await self._write(task.evolve(
                status=TaskStatus.PENDING,
                error=error,
                failures=(*task.failures, error),
                not_before=utcnow() + timedelta(seconds=delay),
                owner=None,
            ))
            await self.engine.queue.release(self.claim, delay=delay)
            return
        self.log.error(
            "task %s: step %r failed for good on attempt %d (%s: %s)",
            task.id, step.name, task.attempt, type(exc).__name__, exc,
        )
        await self._give_up(task.evolve(failures=(*task.failures, error)), error, "step-failed")

    async def _interrupted(self, task: Task, reason: str) -> None:
        if reason == "lost":
            raise LeaseLostError(task.id, "the heartbeat found another owner")
        if reason == "shutdown":
            task = self.task or task
            await self._write(task.evolve(
                status=TaskStatus.COMPENSATING if self.compensating else TaskStatus.PENDING,
                attempt=max(0, task.attempt - 1),  # shutting down is not the step's fault
                owner=None,
            ))
            await self.engine.queue.release(self.claim)
            self.log.info("task %s: released for another worker (shutdown)", task.id)
            return
        await self._give_up(task, _cancel_error(task), None)

    # -- failure for good: compensate, then settle -------------------------------------

    async def _give_up(self, task: Task, error: TaskError, reason: str | None) -> None:
        """The task cannot go on (failed for good, lost too often, or cancelled): undo the
        completed steps that have compensations, then settle. `reason` None = cancelled."""
        cancelled = reason is None
        if not any(s.compensate for s in self.wf.steps[: task.step]):
            if cancelled:
                await self._settle(task, TaskStatus.CANCELLED, error=error)
            else:
                await self._settle(task, TaskStatus.FAILED, error=error, dead_letter=reason)
            return
        task = await self._write(task.evolve(
            status=TaskStatus.COMPENSATING,
            error=error,
            dead_letter=reason,
            cancel_requested=cancelled or task.cancel_requested,
            compensated=(),
            attempt=1,
        ))
        await self._compensate(task)

    async def _compensate(self, task: Task) -> None:
        """Run the compensations not yet done, newest step first, checkpointing each."""
        self.compensating = True
        if self.stop_reason == "cancelled":
            self.stop_reason = None  # compensations run even though the task was cancelled
        for step in reversed(self.wf.steps[: task.step]):
            if step.compensate is None or step.name in task.compensated:
                continue
            ctx = self._context(
                task, step.name, error=task.error, result=task.results.get(step.name), compensation=True
            )
            try:
                await self._call(step.compensate, ctx, self.wf.timeout_for(step))
            except _Interrupted as stop:
                await self._interrupted(task, stop.reason)
                return
            except (_StepFailed, StepTimeoutError) as failed:
                exc = failed.error if isinstance(failed, _StepFailed) else failed
                error = TaskError.from_exception(exc, step=step.name, attempt=task.attempt)
                self.log.error(
                    "task %s: compensation of step %r failed (%s: %s)",
                    task.id, step.name, type(exc).__name__, exc,
                )
                # The failure that started the rollback moves to `failures`, after the
                # earlier attempts of its step already there.
                earlier = task.failures
                if task.error is not None and task.error not in earlier:
                    earlier = (*earlier, task.error)
                await self._settle(
                    task.evolve(failures=earlier),
                    TaskStatus.FAILED, error=error, dead_letter="compensation-failed",
                )
                return
            task = await self._write(task.evolve(compensated=(*task.compensated, step.name)))
        final = TaskStatus.CANCELLED if task.cancel_requested else TaskStatus.COMPENSATED
        await self._settle(task, final, error=task.error, dead_letter=task.dead_letter)

    async def _dead_letter(self, task: Task, reason: str, error: TaskError) -> None:
        self.log.error("task %s: dead-lettered (%s): %s", task.id, reason, error.message)
        await self._settle(task, TaskStatus.FAILED, error=error, dead_letter=reason)

    async def _settle(
        self, task: Task, status: TaskStatus, *, error: TaskError | None, dead_letter: str | None = None
    ) -> None:
        await self._write(
            task.evolve(status=status, error=error, dead_letter=dead_letter, owner=None), final=True
        )

    # -- fenced writes, leases and heartbeats -------------------------------------------

    async def _write(self, task: Task, *, final: bool = False) -> Task:
        """CAS `task` over the version it was read at; a `final` write also acks the claim.

        A conflict is a takeover unless the stored task still names this run as owner: then
        only a cancel request was written meanwhile, which is merged and the write retried.
        """
        try:
            stored = await self._cas(task, task.version, final)
        except ConflictError:
            current = await self.engine.store.get(task.id)
            if current is None or current.owner != self.owner:
                raise
            stored = await self._cas(
                task.evolve(cancel_requested=current.cancel_requested), current.version, final
            )
        self.task = stored
        return stored

    async def _cas(self, task: Task, expected_version: int, final: bool) -> Task:
        atomic = self.engine._atomic
        if not final:
            return await self.engine.store.update(task, expected_version)
        # The run is over once this lands: a beat failing from here on (the ack ends the
        # lease) is no news.
        self.beating = False
        if atomic is not None:
            # One round trip: the backend writes and acks together (or writes alone when
            # the lease was lost; the new holder then acks the terminal task on sight).
            return await atomic.settle(task, expected_version, self.claim)
        stored = await self.engine.store.update(task, expected_version)
        await self._ack()
        return stored

    async def _ack(self) -> None:
        try:
            await self.engine.queue.ack(self.claim)
        except LeaseLostError:
            # The record is already settled; whoever holds the new lease acks it on sight.
            self.log.debug("task %s: ack after lease loss ignored", self.claim.task_id)

    def _request_beat(self) -> None:
        loop = self.handler.get_loop() if self.handler else asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._beat_requested)

    def interrupt(self, reason: str) -> None:
        """Stop the running step (if any) for `reason`; the run then acts on it."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel.set()
        if self.step_future is not None and not self.step_future.done():
            self.step_future.cancel()
        elif self.in_step and self.handler is not None and not self.step_cancelled:
            self.step_cancelled = True
            self.handler.cancel()

    # The heartbeat is a timer that starts a beat task only when a beat is due (every
    # lease/3 from taking ownership, and again lease/3 after each beat ends) or asked for;
    # a task waiting out the interval for every run cost more than the run's steps.

    def _start_heartbeat(self) -> None:
        self.beating = True
        self._beat_later()

    def _stop_heartbeat(self) -> asyncio.Task[None] | None:
        """Stop beating; returns the beat in flight (cancelled), if any, to be awaited."""
        self.beating = False
        if self.beat_timer is not None:
            self.beat_timer.cancel()
            self.beat_timer = None
        if self.beat is not None:
            self.beat.cancel()
        return self.beat

    def _beat_later(self) -> None:
        loop = asyncio.get_running_loop()
        self.beat_timer = loop.call_later(self.engine.lease / 3, self._beat_due)

    def _beat_due(self) -> None:
        self.beat_timer = None
        if self.beating and self.beat is None:
            self.beat = asyncio.ensure_future(self._heartbeat())

    def _beat_requested(self) -> None:
        """A step asked for a beat now: start one, or another as soon as the current ends."""
        if not self.beating:
            return
        if self.beat is not None:
            self.beat_again = True
            return
        if self.beat_timer is not None:
            self.beat_timer.cancel()
        self._beat_due()

    async def _heartbeat(self) -> None:
        """One beat: extend the lease and watch for cancellation or a takeover; then the
        next one is scheduled, unless the task is lost."""
        try:
            keep_beating = await self._beat()
        finally:
            self.beat = None
        if not keep_beating:
            self.beating = False  # lost: nothing to renew, not even when a step asks
        elif self.beating:
            if self.beat_again:
                self.beat_again = False
                self._beat_due()
            else:
                self._beat_later()

    async def _beat(self) -> bool:
        engine = self.engine
        interval = engine.lease / 3
        try:
            self.claim = await asyncio.wait_for(
                engine.queue.extend(self.claim, lease=engine.lease), timeout=interval
            )
            current = await asyncio.wait_for(engine.store.get(self.claim.task_id), interval)
        except LeaseLostError:
            if self.beating:
                self.log.warning("task %s: lease lost; stopping its step", self.claim.task_id)
            self.interrupt("lost")
            return False
        except asyncio.TimeoutError:
            if self.beating:
                self.log.error(
                    "task %s: heartbeat failed: the backend did not answer within %.1fs",
                    self.claim.task_id, interval,
                )
            return True
        except Exception as exc:
            if self.beating:
                self.log.error("task %s: heartbeat failed (%s)", self.claim.task_id, _describe(exc))
            return True
        if current is None or (current.owner is not None and current.owner != self.owner):
            self.interrupt("lost")
            return False
        if current.cancel_requested and not self.compensating:
            self.interrupt("cancelled")
        return True


# -- helpers ------------------------------------------------------------------------------


def _body_bytes(body: Any) -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return dump_json(body, what="the task body")


def _step_index(wf: Workflow, from_step: int | str | None, *, default: int) -> int:
    if from_step is None:
        return default
    if isinstance(from_step, str):
        for i, s in enumerate(wf.steps):
            if s.name == from_step:
                return i
        raise ValueError(f"workflow {wf.name!r} has no step named {from_step!r}")
    if not 0 <= from_step < len(wf.steps):
        raise ValueError(f"from_step {from_step} is out of range for {len(wf.steps)} steps")
    return from_step


def _engine_error(kind: str, message: str, *, step: str | None = None, attempt: int = 0) -> TaskError:
    return TaskError(type=f"salvador.{kind}", message=message, step=step, attempt=attempt)


def _cancel_error(task: Task) -> TaskError:
    return TaskError(
        type=f"{StepCancelledError.__module__}.{StepCancelledError.__qualname__}",
        message="the task was cancelled",
        step=None,
        attempt=task.attempt,
    )


def _describe(exc: BaseException) -> str:
    if str(exc):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"{type(exc).__name__}: an operation did not finish in time"
    return type(exc).__name__


async def _contained(fn: StepFn, ctx: StepContext) -> Any:
    """Await an async step in a task of its own, with whatever it raises (but a cancel)
    turned into `_StepFailed`: a `SystemExit` leaving a task would stop the event loop."""
    try:
        value = await cast(Any, fn(ctx))
        if inspect.isawaitable(value):
            value = await value
        return value
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        raise _StepFailed(exc) from None


def _check_text(what: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} holds a character UTF-8 cannot store ({exc.reason} at position {exc.start}); "
            "lone surrogates come from os.fsdecode or surrogateescape: decode the bytes properly"
        ) from None


def _check_key(key: object) -> None:
    """The same answer on every backend: an idempotency key is a non-empty str."""
    if key is None:
        return
    if not isinstance(key, str) or not key:
        raise ValueError(
            f"idempotency_key must be a non-empty str or None, got {key!r}; convert ids "
            "yourself (str(order_id)) so that 5 and '5' are never taken for different keys"
        )
    _check_text("idempotency_key", key)


def _check_meta(meta: object) -> None:
    if meta is None:
        return
    if not isinstance(meta, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise TypeError(f"meta must be a dict of str to str, got {meta!r}")
    for k, v in meta.items():
        _check_text(f"meta key {k!r}", k)
        _check_text(f"meta[{k!r}]", v)


def _delay_seconds(delay: object) -> float:
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise ValueError(f"delay must be seconds (int or float) or a timedelta, got {delay!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"delay must be a finite number of seconds, got {delay!r}")
    if seconds > 10 * 365 * 86400:
        raise ValueError(f"delay of {seconds:.0f}s is over ten years; pass not_before for a date")
    return seconds


def _backoff(failures: int) -> float:
    return float(min(0.1 * 2 ** min(failures, 10), 5.0))


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def _quietly(coro: Any, logger: logging.Logger) -> None:
    try:
        await coro
    except Exception as exc:
        logger.debug("ignored during shutdown: %s", _describe(exc))


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: Any) -> list[signal.Signals]:
    if threading.current_thread() is not threading.main_thread():
        return []
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError):
            continue
        installed.append(sig)
    return installed
