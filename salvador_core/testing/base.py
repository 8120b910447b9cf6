"""What every conformance class shares: the fixture contract, back doors, capabilities.

A backend author subclasses `BackendConformance` (or one of `StoreChecks`, `QueueChecks`,
`EngineChecks`) and provides one async fixture, `backend`, yielding a fresh, opened,
isolated instance. The suite then injects faults through two back doors instead of
sleeping: `corrupt_record` and `expire_lease`, methods of the test class. A method that
corrupts data should not ship on a production backend, so the backends salvador ships give
theirs as test-class mixins (`salvador_core.testing.hooks`, `salvador_redis.testing`); the
defaults call `write_raw(task_id, raw)` and `expire_lease(task_id)` methods of the backend
(sync or async), for test-only backends that have them. They are not optional: a check that
needs a missing back door fails and says what to add.

A backend declaring `durable` or `shared` also overrides `open_second_instance`: the
checks of those capabilities open a second, independent instance on the same storage
while the first stays open, as a second process (or the process after a crash) would.

When a wait times out, the message says what can be seen of the task: its record, the
claim an engine run holds on it (deliveries, lease) and whether `engine.run()` is still
running, so a lease or queue bug shows its state instead of only "timed out".
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest

from salvador_core.engine import Engine
from salvador_core.protocols import Backend, TaskQueue, TaskStore
from salvador_core.task import Claim, Task, new_task_id, utcnow
from salvador_core.workflow import Workflow

#: Optional capabilities a backend may declare in `capabilities`; each names the checks
#: that need it. Core guarantees have no capability and cannot be skipped.
CAPABILITIES: dict[str, str] = {
    "atomic": "store and queue in one object with atomic submit/requeue/settle (the Backend "
    "protocol); must match what the backend implements, since the engine uses them when present",
    "cluster": "runs on a sharded server (informational: no check needs it)",
    "durable": "a write is on the storage when the call returns: a second instance opened on the "
    "same storage reads it while the first is still open (needs `open_second_instance`), and "
    "records survive closing and reopening",
    "shared": "several processes share this storage: independent instances on it (opened with "
    "`open_second_instance`) see each other's writes, and races between them on creates, "
    "idempotent creates, fenced updates, claims and acks keep every guarantee",
}

#: The atomic shortcuts of the `Backend` protocol; the engine uses them only when a backend
#: has all three.
ATOMIC_METHODS = ("submit", "requeue", "settle")

#: The awkward workflow names every backend must keep apart and round-trip intact.
AWKWARD_NAMES = (
    "with space",
    "dots.in.name",
    "star*",
    "gt>",
    "colon:name",
    "{brace}",
    "}closing{",
    "percent%2F",
    "slash/name",
    "ünïcødé-名前",
    "emoji-🚀",
)


class ConformanceBase:
    """Shared machinery; not collected on its own (its name does not start with Test)."""

    #: Optional capabilities the backend under test declares (see `CAPABILITIES`).
    capabilities: ClassVar[frozenset[str]] = frozenset()

    #: Seconds used as a lease in checks that let one expire by the clock. Backends whose
    #: clock has coarse resolution may raise it.
    short_lease: ClassVar[float] = 0.4

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A conformance suite a subclass can quietly switch off is none: refuse overrides.
        for base in cls.__mro__[1:]:
            if not vars(base).get("_defines_checks", False):
                continue
            for name, value in vars(base).items():
                if name.startswith("test_") and name in vars(cls) and vars(cls)[name] is not value:
                    raise TypeError(
                        f"{cls.__name__}.{name} overrides a conformance check of "
                        f"{base.__name__}; checks cannot be replaced or disabled. Declare "
                        "capabilities instead, or fix the backend."
                    )
        unknown = set(cls.capabilities) - set(CAPABILITIES)
        if unknown:
            raise TypeError(
                f"{cls.__name__}.capabilities names unknown capabilities {sorted(unknown)}; "
                f"known: {sorted(CAPABILITIES)}"
            )

    # -- back doors ------------------------------------------------------------------------

    async def corrupt_record(self, backend: Any, task_id: str, raw: bytes) -> None:
        """Overwrite the stored record of `task_id` with `raw`, bypassing every check."""
        await _back_door(backend, "write_raw", task_id, raw)

    async def expire_lease(self, backend: Any, claim: Claim) -> None:
        """Make the lease of `claim` expire now, as if its holder had died long ago."""
        await _back_door(backend, "expire_lease", claim.task_id)

    async def open_second_instance(self, backend: Any) -> Any:
        """Open and return another instance of the backend under test on the same storage as
        `backend`, as a second process would have it: its own connections and in-process
        state, nothing shared with `backend` but the storage. `backend` stays open.

        The checks of the `durable` and `shared` capabilities need it, so a backend that
        declares either overrides this method on its test class; the suite closes the
        instance it gets."""
        declared = sorted({"durable", "shared"} & set(self.capabilities))
        pytest.fail(
            f"{type(self).__name__} declares {declared or 'a capability'} whose checks open a second "
            "instance on the same storage, but does not override `open_second_instance(backend)`: "
            "return a new, opened instance of your backend on the storage `backend` uses (see "
            "docs/writing-a-backend.md)."
        )

    async def reopen(self, backend: Any) -> Any:
        """Close `backend` and open it again on the same storage; returns the backend to use
        from then on (the fixture still closes the original). Override when your backend
        cannot be reopened in place."""
        await backend.close()
        await backend.open()
        return backend

    # -- helpers for checks ------------------------------------------------------------------

    def require(self, capability: str) -> None:
        """Skip the running check, loudly, unless the backend declares `capability`."""
        if capability not in self.capabilities:
            pytest.skip(f"backend does not declare capability {capability!r}: {CAPABILITIES[capability]}")

    def require_atomic(self, backend: Any) -> Backend:
        """The backend as a `Backend`, or skip: the engine uses the atomic shortcuts exactly
        when a backend implements all three, so they are checked exactly then. A backend
        that declares `atomic` but lacks one fails instead, naming it: the engine would
        silently take the split path and never call the others."""
        if isinstance(backend, Backend):
            return backend
        missing = [name for name in ATOMIC_METHODS if not callable(getattr(backend, name, None))]
        lacks = _listed(missing, "or") or "the TaskStore/TaskQueue methods they build on"
        if "atomic" in self.capabilities:
            pytest.fail(
                f"{type(backend).__name__} declares the 'atomic' capability but has no {lacks}: the "
                "engine uses submit, requeue and settle only when all three are there, so it would "
                "silently take the split path (two writes where one atomic step was meant) and never "
                f"call the others. Add {_listed(missing, 'and') or lacks} (see "
                "docs/writing-a-backend.md), or stop declaring 'atomic'."
            )
        has = [name for name in ATOMIC_METHODS if name not in missing]
        pytest.skip(
            f"backend has no {lacks}; the engine uses the split path"
            + (f" and never calls its {_listed(has, 'and')}" if has else "")
        )

    @asynccontextmanager
    async def second_instance(self, backend: Any) -> AsyncIterator[Any]:
        """`open_second_instance(backend)` for the body of the `async with`, closed after."""
        other = await self.open_second_instance(backend)
        try:
            yield other
        finally:
            await other.close()

    @staticmethod
    def make_task(workflow: str = "wf", **fields: Any) -> Task:
        return Task(id=new_task_id(), workflow=workflow, **fields)

    @staticmethod
    def atomic(backend: Any) -> Backend | None:
        return backend if isinstance(backend, Backend) else None

    @staticmethod
    def check_protocols(backend: Any) -> None:
        assert isinstance(backend, TaskStore), f"{type(backend).__name__} is not a TaskStore"
        assert isinstance(backend, TaskQueue), f"{type(backend).__name__} is not a TaskQueue"

    def engine(self, backend: Any, *workflows: Workflow, **options: Any) -> Engine:
        """An engine on `backend` with settings that make checks fast."""
        settings: dict[str, Any] = {
            "lease": 2.0, "poll_interval": 0.05, "drain_timeout": 2.0, "concurrency": 4,
        }
        settings.update(options)
        return Engine(backend, workflows=workflows, **settings)

    @asynccontextmanager
    async def running(self, engine: Engine) -> AsyncIterator[Engine]:
        """Run `engine`'s workers in the background for the body of the `async with`.

        The engine is opened once more than it closes, so the fixture's backend stays open
        for the checks that follow (the fixture closes it).
        """
        await engine.open()
        worker = asyncio.create_task(engine.run(handle_signals=False))
        self._workers()[engine] = worker
        await asyncio.sleep(0)  # let run() start before the body can stop it
        try:
            yield engine
        finally:
            engine.stop()
            await asyncio.wait_for(worker, 30)

    def _workers(self) -> dict[Engine, asyncio.Task[None]]:
        """The `run()` task of each engine `running()` started in this check (for
        `describe_task`); kept on the instance, which pytest makes afresh per check."""
        workers: dict[Engine, asyncio.Task[None]] = self.__dict__.setdefault("_running_workers", {})
        return workers

    @staticmethod
    async def wait_until(
        condition: Callable[[], Awaitable[Any] | Any],
        *,
        timeout: float = 10.0,
        what: str = "condition",
        state: Callable[[], Awaitable[str]] | None = None,
    ) -> Any:
        """Poll `condition` every 10 ms until it returns something truthy; its value.

        On timeout the error names `what` and, if given, what `state()` says about it then.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if time.monotonic() > deadline:
                seen = f"; {await state()}" if state is not None else ""
                raise AssertionError(f"timed out after {timeout}s waiting for {what}{seen}")
            await asyncio.sleep(0.01)

    async def settled(
        self, engine: Engine, task_id: str, *, timeout: float = 10.0, what: str | None = None
    ) -> Task:
        """Wait until task `task_id` is terminal and return it; `what` words the timeout."""

        async def terminal() -> Task | None:
            task = await engine.get_task(task_id)
            return task if task is not None and task.status.terminal else None

        result: Task = await self.wait_until(
            terminal, timeout=timeout, what=what or f"task {task_id} to finish",
            state=functools.partial(self.describe_task, engine, task_id),
        )
        return result

    async def describe_task(self, engine: Engine, task_id: str) -> str:
        """What can be seen of task `task_id` now, for a timeout message: its record, the
        claim a run of `engine` holds on it (deliveries, lease) and whether `engine.run()`
        still runs. Never raises: a failure to look is reported as part of the text."""
        try:
            task = await asyncio.wait_for(engine.get_task(task_id), 2.0)
        except Exception as exc:
            record = f"its record cannot be read ({type(exc).__name__}: {exc})"
        else:
            record = "it has no record" if task is None else _record_state(task, engine)
        return f"{record}; {_claim_state(engine, task_id)}; {self._worker_state(engine)}"

    def _worker_state(self, engine: Engine) -> str:
        worker = self._workers().get(engine)
        if worker is None:
            return "no engine.run() was started on it by the check"
        if not worker.done():
            return "engine.run() is running"
        if worker.cancelled():
            return "engine.run() was cancelled"
        error = worker.exception()
        return "engine.run() has returned" if error is None else (
            f"engine.run() ended with {type(error).__name__}: {error}"
        )

    async def claim_soon(
        self, queue: TaskQueue, workflow: str, *, lease: float = 5.0, wait: float = 2.0
    ) -> Claim:
        claim = await queue.claim(workflow, lease=lease, wait=wait)
        assert claim is not None, f"nothing claimable in {workflow!r} within {wait}s"
        return claim

    async def drain(self, queue: TaskQueue, workflow: str, *, lease: float = 5.0) -> list[Claim]:
        """Claim everything that is ready now (no waiting)."""
        claims: list[Claim] = []
        while (claim := await queue.claim(workflow, lease=lease, wait=0)) is not None:
            claims.append(claim)
        return claims


async def _back_door(backend: Any, name: str, *args: Any) -> None:
    method = getattr(backend, name, None)
    if method is None:
        pytest.fail(
            f"{type(backend).__name__} has no `{name}` back door: give it a method "
            f"`{name}(...)` or override `{'corrupt_record' if name == 'write_raw' else name}` "
            "on your conformance test class (see docs/writing-a-backend.md)."
        )
    result = method(*args)
    if inspect.isawaitable(result):
        await result


def _listed(names: list[str], conjunction: str) -> str:
    """`a`, `a and b`, `a, b and c` (or with `or`)."""
    if len(names) < 2:
        return "".join(names)
    return f"{', '.join(names[:-1])} {conjunction} {names[-1]}"


def _record_state(task: Task, engine: Engine) -> str:
    """The stored fields that tell where a task is stuck, in one line."""
    wf = engine.workflows.get(task.workflow)
    if wf is not None and task.step < len(wf.steps):
        step = f"step {task.step}/{len(wf.steps)} done ({wf.steps[task.step].name!r} next)"
    else:
        step = f"step {task.step} done"
    text = (
        f"record: status {task.status.value}, {step}, attempt {task.attempt}, "
        f"version {task.version}, owner {task.owner or 'none'}"
    )
    if task.not_before is not None:
        due = (task.not_before - utcnow()).total_seconds()
        text += f", due {'in ' if due > 0 else ''}{abs(due):.2f}s{'' if due > 0 else ' ago'}"
    if task.cancel_requested:
        text += ", cancel requested"
    if task.dead_letter is not None:
        text += f", dead letter {task.dead_letter!r}"
    if task.error is not None:
        text += f", error {task.error.type}: {task.error.message[:200]!r}"
    if task.failures:
        text += f", {len(task.failures)} failed attempt(s) recorded"
    return text


def _claim_state(engine: Engine, task_id: str) -> str:
    """The leases this engine's runs hold on `task_id` (the queue itself cannot be read
    without changing it: a claim would take the task)."""
    held = []
    for run in engine.active_runs():
        claim = run.claim
        if claim.task_id != task_id:
            continue
        left = claim.deadline - time.time()
        lease = f"lease ends in {left:.2f}s" if left > 0 else f"lease ran out {-left:.2f}s ago"
        stopping = run.stopping
        held.append(
            f"run {run.owner} holds delivery {claim.deliveries}, {lease}"
            + (f", stopping ({stopping})" if stopping else "")
        )
    if not held:
        return (
            "no run of this engine holds a claim on it (it is queued, delayed, leased elsewhere, "
            "or no longer queued at all)"
        )
    return "; ".join(held)


def ids(claims: Iterable[Claim]) -> list[str]:
    return [c.task_id for c in claims]


def checks(cls: type) -> type:
    """Mark a class as holding conformance checks (which subclasses may not override)."""
    cls._defines_checks = True  # type: ignore[attr-defined]
    return cls
