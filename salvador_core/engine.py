"""The engine: the producer and admin API of salvador, over one backend face.

`Engine` submits, inspects, requeues, cancels and purges tasks, and `run()` hands the
registered workflows to a `Worker` (salvador_core/worker.py), which claims tasks and starts
a `Run` (salvador_core/run.py) for each. Whatever the backend, the engine talks to one
object with atomic `submit`/`requeue`/`settle`: the backend itself, or a `SplitBackend`
composing a separate store and queue (salvador_core/split.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from salvador_core.config import connect
from salvador_core.errors import (
    ConfigurationError,
    ConflictError,
    InvalidStateError,
    SalvadorError,
    StepCancelledError,
    TaskNotFoundError,
    UnknownWorkflowError,
)
from salvador_core.observe import Observer, combine
from salvador_core.observe import logger as log
from salvador_core.protocols import Backend, TaskQueue, TaskStore
from salvador_core.run import ActiveRun
from salvador_core.settings import Settings
from salvador_core.split import compose
from salvador_core.task import (
    DEAD_LETTER_STATUSES,
    TERMINAL_STATUSES,
    Page,
    Task,
    TaskError,
    TaskStatus,
    check_size,
    dump_json,
    new_task_id,
    purge_statuses,
    utcnow,
)
from salvador_core.worker import Worker
from salvador_core.workflow import Workflow

__all__ = ["Engine"]


class Engine:
    """Submits tasks and runs registered workflows against a backend.

    `store` is a backend holding both halves (any `memory://`, `sqlite:///`, `redis://`
    backend), or a store with a separate `queue`. `concurrency` is how many tasks of each
    workflow this process runs at once. `lease` is how long a claim lasts without a
    heartbeat (heartbeats run every lease/3), so a dead worker's task is re-delivered after
    at most `lease` seconds. `poll_interval` bounds each claim wait (waiting itself does not
    poll where the backend can wake workers). `drain_timeout` is how long shutdown lets
    running steps finish before interrupting them and releasing their tasks. `retention`,
    when set, purges terminal tasks older than that many seconds. `settings` gives all of
    these at once (`Settings.from_env()`); keyword arguments win over it. `observers`
    receive every event (default: one `LoggingObserver` on `logger`; `[]` for none).
    """

    def __init__(
        self,
        store: TaskStore,
        queue: TaskQueue | None = None,
        *,
        workflows: Iterable[Workflow] = (),
        concurrency: int | None = None,
        lease: float | None = None,
        poll_interval: float | None = None,
        drain_timeout: float | None = None,
        max_payload_bytes: int | None = None,
        retention: float | None = None,
        durability: str | None = None,
        settings: Settings | None = None,
        observers: Iterable[Observer] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        options = {
            "concurrency": concurrency,
            "lease": lease,
            "poll_interval": poll_interval,
            "drain_timeout": drain_timeout,
            "max_payload_bytes": max_payload_bytes,
            "retention": retention,
            "durability": durability,
        }
        self.settings = (settings or Settings()).with_options(
            **{k: v for k, v in options.items() if v is not None}
        )
        if queue is None and not isinstance(store, TaskQueue):
            raise ConfigurationError(
                f"{type(store).__name__} is only a store; pass a queue too: Engine(store, queue)"
            )
        self.store = store
        self.queue: TaskQueue = queue if queue is not None else store  # type: ignore[assignment]
        #: The one object the engine talks to (see `SplitBackend`).
        self.backend: Backend = compose(store, queue)
        self.log = logger or log
        self.observer = combine(observers, self.log)
        backend_limit = getattr(self.backend, "max_payload_bytes", None)
        limit = self.settings.max_payload_bytes
        self.max_payload_bytes = min(limit, backend_limit or limit)
        self._workflows: dict[str, Workflow] = {}
        self._opened = 0
        self._preflown = False  # the preflight warned (or found nothing) once already
        self._worker = Worker(
            self.backend,
            self._workflows,
            self.settings,
            max_payload_bytes=self.max_payload_bytes,
            observer=self.observer,
            log=self.log,
            purge=self.purge,
        )
        for wf in workflows:
            self.register(wf)

    @classmethod
    def from_url(cls, url: str | None = None, **options: Any) -> Engine:
        """An engine on the backend at `url`, or `$SALVADOR_URL`, or the pair
        `$SALVADOR_STORE_URL` + `$SALVADOR_QUEUE_URL`. Settings not given in `options` are
        read from the environment (`Settings.from_env`); other `options` go to `Engine(...)`."""
        setting_names = set(Settings.__dataclass_fields__)
        given = {k: options.pop(k) for k in list(options) if k in setting_names}
        settings = Settings.from_env(**given, url=url)
        if settings.url is None and settings.store_url and settings.queue_url:
            return cls(connect(settings.store_url), connect(settings.queue_url), settings=settings, **options)
        return cls(connect(settings.url), settings=settings, **options)

    # Settings, readable as attributes, as before there was a `Settings` object.
    @property
    def concurrency(self) -> int:
        return self.settings.concurrency

    @property
    def lease(self) -> float:
        return self.settings.lease

    @property
    def poll_interval(self) -> float:
        return self.settings.poll_interval

    @property
    def drain_timeout(self) -> float:
        return self.settings.drain_timeout

    @property
    def retention(self) -> float | None:
        return self.settings.retention

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect the backend(s) and run the durability preflight (see `Settings`).
        `async with engine` does this for you."""
        if self._opened == 0:
            await self.backend.open()
            try:
                await self._preflight()
            except BaseException:
                await self.backend.close()
                raise
        self._opened += 1

    async def _preflight(self) -> None:
        """What a crash would lose with the backend as configured: refused in `strict`
        mode, logged once per engine as a warning otherwise (memory://, never durable by
        design, is not warned about)."""
        mode = self.settings.durability
        if mode == "off" or (self._preflown and mode == "warn"):
            return
        from salvador_core import durability
        from salvador_core.backends.memory import MemoryBackend

        try:
            found = await durability.findings(self.backend)
        except Exception as exc:
            if mode == "strict":
                raise
            self.log.warning("durability: could not read the backend's settings (%s); not checked", exc)
            return
        critical = durability.blocking(found)
        if mode == "strict" and critical:
            raise ConfigurationError(
                "durability=strict: the backend would lose tasks in a crash: "
                + "; ".join(f"{f.setting}: {f.loses} Fix: {f.fix}" for f in critical)
            )
        self._preflown = True
        if not isinstance(self.backend, MemoryBackend):
            for finding in critical:
                self.log.warning(
                    "durability: %s: %s Fix: %s (salvador check explains; durability='strict' refuses)",
                    finding.setting, finding.loses, finding.fix,
                )

    async def close(self) -> None:
        if self._opened == 0:
            return
        self._opened -= 1
        if self._opened == 0:
            await self.backend.close()

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
        connection: Any = None,
    ) -> str:
        """Store a new task and queue it; returns its id once it is durable.

        `body` is bytes, a str (stored as UTF-8) or any JSON value. A repeated
        `idempotency_key` for the same workflow returns the first task's id and creates
        nothing. `delay` (seconds) or `not_before` hold delivery back until then.
        `connection`: store the task in the caller's open transaction on that connection
        (backends that support it, such as PostgreSQL): it exists, and runs, only if that
        transaction commits.
        """
        task = self.build_task(
            workflow, body, idempotency_key=idempotency_key, meta=meta, delay=delay, not_before=not_before
        )
        if connection is None:
            stored = await self.backend.submit(task)
        else:
            submit_in = getattr(self.backend, "submit_in", None)
            if submit_in is None:
                raise ConfigurationError(
                    f"{type(self.backend).__name__} cannot store a task in a caller's transaction "
                    "(connection=...); submit without it, or use a backend that can (PostgreSQL)"
                )
            stored = await submit_in(connection, task)
        self.observer.submitted(stored, created=stored.id == task.id)
        return stored.id

    def build_task(
        self,
        workflow: str | Workflow,
        body: Any = b"",
        *,
        idempotency_key: str | None = None,
        meta: dict[str, str] | None = None,
        delay: float | timedelta | None = None,
        not_before: datetime | None = None,
    ) -> Task:
        """The task `submit` would store, checked, not stored: every mistake in the arguments
        raises here (the same error on every backend) and nothing is written."""
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
        if not_before is not None and (not isinstance(not_before, datetime) or not_before.tzinfo is None):
            raise ValueError(
                f"not_before must be a timezone-aware datetime (e.g. datetime.now(timezone.utc)), "
                f"got {not_before!r}"
            )
        return self.observer.submitting(
            Task(
                id=new_task_id(),
                workflow=name,
                body=data,
                meta=dict(meta or {}),
                idempotency_key=idempotency_key,
                not_before=not_before,
            )
        )

    async def get_task(self, task_id: str) -> Task | None:
        """The task as stored now, or None if there is no such task."""
        return await self.backend.get(task_id)

    async def list_tasks(
        self,
        *,
        workflow: str | None = None,
        status: TaskStatus | Iterable[TaskStatus] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """One page of tasks, oldest first; pass `page.cursor` back for the next."""
        return await self.backend.list(workflow=workflow, status=status, limit=limit, cursor=cursor)

    async def dead_letters(
        self, workflow: str | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        """Tasks that failed for good (`failed` or `compensated`), each with its reason in
        `task.dead_letter` and the error in `task.error`."""
        return await self.backend.list(
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
        return await self.backend.requeue(fresh, task.version)

    async def discard(self, task_id: str) -> bool:
        """Delete a finished (terminal) task for good. False if it did not exist."""
        task = await self.backend.get(task_id)
        if task is None:
            return False
        if not task.status.terminal:
            raise InvalidStateError(
                f"task {task_id} is {task.status.value}; cancel it first, then discard it"
            )
        return await self.backend.delete(task_id)

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
                return await self.backend.update(change, task.version)
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
        return await self.backend.purge(older_than=cutoff, statuses=purge_statuses(statuses))

    async def _get_existing(self, task_id: str) -> Task:
        task = await self.backend.get(task_id)
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
        try:
            await self._worker.run(handle_signals=handle_signals)
        finally:
            await self.close()

    def stop(self) -> None:
        """Ask `run()` to drain and return; also when it was started but has not begun yet."""
        self._worker.stop()

    @property
    def worker_id(self) -> str:
        """This process's worker id (host:pid:random), as written into records it owns."""
        return self._worker.id

    def active_runs(self) -> list[ActiveRun]:
        """The tasks this engine's worker is running now: each with the run's owner token,
        its current lease (`claim`) and why it is stopping, if it is."""
        return self._worker.active()


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


def _cancel_error(task: Task) -> TaskError:
    return TaskError(
        type=f"{StepCancelledError.__module__}.{StepCancelledError.__qualname__}",
        message="the task was cancelled",
        step=None,
        attempt=task.attempt,
    )


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
