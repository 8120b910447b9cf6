"""End-to-end engine checks: the promises of docs/failures.md, held against any backend.

Each check drives real engines over the backend under test and reads back what landed in
the store. Faults are injected the way they happen: a dead worker is a claim taken and a
record written exactly as an engine writes it, followed by the `expire_lease` back door;
a damaged record comes through the `corrupt_record` back door. Nothing sleeps past a lease.
Where a check must show that something did *not* happen (a step not re-run), it first
waits for the engine to finish all it would do (stopping it drains every run), so a broken
engine has had its chance to misbehave.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from salvador_core.engine import Engine
from salvador_core.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptRecordError,
    InvalidStateError,
    LeaseLostError,
    PayloadTooLargeError,
    UnknownWorkflowError,
)
from salvador_core.protocols import TaskCounts
from salvador_core.retry import NO_RETRY, RetryPolicy
from salvador_core.task import (
    COMPLETION_MINUTES,
    DEAD_LETTER_STATUSES,
    Claim,
    Task,
    TaskStatus,
    WorkflowStats,
    encode_task,
    utcnow,
)
from salvador_core.testing.base import ConformanceBase, checks
from salvador_core.workflow import StepContext, Workflow

#: Retries at once: for checks about what is retried, not about when.
RETRY_NOW = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0)

#: Timing slack for the backend's clock resolution (Redis `TIME` has microseconds, others
#: milliseconds); a delay measured on this machine may look this much shorter.
CLOCK_SLACK = 0.005

#: How late a delayed or retried task may start and still count as on time (CI is slow).
LATENESS = 0.5


def _has_length(items: list[Any], n: int) -> bool:
    return len(items) == n


def _type_name(error: Any) -> str:
    return str(getattr(error, "type", "")).rsplit(".", 1)[-1]


#: How soon `run()` must return after `stop()` while its workers wait in `claim` (issue 12:
#: 100 ms whatever `poll_interval` is), judged on the median of `STOP_ROUNDS` stops so that
#: one stall of a loaded machine does not fail the check; every stop must still return.
STOP_WITHIN = 0.1
STOP_ROUNDS = 5


class _Abort(BaseException):
    """A `BaseException` of the user's own, outside `Exception`'s tree."""


@contextmanager
def _contained(escaped: list[BaseException]) -> Iterator[None]:
    """Record in `escaped`, and stop there, every `BaseException` other than cancellation
    that leaves a task created meanwhile (the engine's runs and claim loops).

    asyncio lets `KeyboardInterrupt` and `SystemExit` out of the event loop: from a broken
    engine they would end the whole pytest session (or, in production, the worker) instead
    of failing one check. The others would end their task with an exception nobody
    retrieves, logged whenever the garbage collector gets to it.
    """
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> Any:
        guarded = _guard(coro, escaped)
        if previous is not None:
            return previous(loop, guarded, **options)
        return asyncio.Task(guarded, loop=loop, **options)

    loop.set_task_factory(factory)
    try:
        yield
    finally:
        loop.set_task_factory(previous)


async def _guard(coro: Coroutine[Any, Any, Any], escaped: list[BaseException]) -> Any:
    try:
        return await coro
    except (asyncio.CancelledError, Exception):
        raise
    except BaseException as exc:
        escaped.append(exc)
        return None


async def _refused(call: Awaitable[Any], name: str, given: Any) -> None:
    """`call` (a submit with `name=given`) must raise ValueError naming `name`."""
    try:
        await call
    except ValueError as exc:
        if name not in str(exc):
            raise AssertionError(
                f"submit({name}={given!r}) raised ValueError without naming {name!r}: {exc}"
            ) from exc
        return
    except Exception as exc:
        raise AssertionError(
            f"submit({name}={given!r}) raised {type(exc).__name__}: {exc}; expected a ValueError "
            f"naming {name!r}, raised before anything is stored"
        ) from exc
    raise AssertionError(
        f"submit({name}={given!r}) was accepted; it must raise ValueError naming {name!r} and "
        "store nothing"
    )


@checks
class EngineChecks(ConformanceBase):
    """Engine end to end: steps, resume, fencing, retries, timeouts, sagas, dead letters,
    cancellation, idempotent submit, delays, retention, bad input, shutdown."""

    # -- fault injection ---------------------------------------------------------------

    async def _abandon(self, backend: Any, workflow: str, task_id: str, **state: Any) -> tuple[Claim, Task]:
        """Do what a worker does when it claims `task_id` and starts a step, then die.

        The claim is taken from the queue and ownership written exactly as the engine
        writes it (`running`, attempt 1, an owner) plus `state`; then the lease is expired
        through the back door. Returns the dead worker's claim and the task it wrote.
        """
        claim = await self.claim_soon(backend, workflow, lease=30.0)
        assert claim.task_id == task_id, f"expected to claim {task_id}, got {claim.task_id}"
        task = await backend.get(task_id)
        assert task is not None
        fields: dict[str, Any] = {"status": TaskStatus.RUNNING, "attempt": 1, "owner": "dead-worker"}
        fields.update(state)
        owned: Task = await backend.update(task.evolve(**fields), task.version)
        await self.expire_lease(backend, claim)
        return claim, owned

    async def _engine_claim(self, engine: Engine, task_id: str) -> Claim:
        """The claim under which `engine` runs `task_id` now (the run that owns the record),
        so a check can expire it through the back door as if that worker had died."""

        async def find() -> Claim | None:
            task = await engine.get_task(task_id)
            for run in engine.active_runs():
                if task is not None and run.task_id == task_id and run.owner == task.owner:
                    return run.claim
            return None

        claim: Claim = await self.wait_until(
            find, what=f"an engine run owning {task_id}",
            state=functools.partial(self.describe_task, engine, task_id),
        )
        return claim

    async def _status(self, engine: Engine, task_id: str, status: TaskStatus) -> Task:
        async def reached() -> Task | None:
            task = await engine.get_task(task_id)
            return task if task is not None and task.status is status else None

        task: Task = await self.wait_until(
            reached, what=f"task {task_id} to be {status.value}",
            state=functools.partial(self.describe_task, engine, task_id),
        )
        return task

    # -- happy path --------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_three_steps_run_once_each_in_order_and_the_task_completes(self, backend: Any) -> None:
        calls: list[str] = []

        async def a(ctx: StepContext) -> str:
            calls.append("a")
            return "A"

        def b(ctx: StepContext) -> str:
            calls.append("b")
            return "B"

        async def c(ctx: StepContext) -> None:
            calls.append("c")

        wf = Workflow("happy").step("a", a).step("b", b).step("c", c)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            tid = await eng.submit(wf, b"order")
            task = await self.settled(eng, tid)
        assert calls == ["a", "b", "c"]
        assert task.status is TaskStatus.COMPLETED
        assert task.step == 3
        assert task.results == {"a": "A", "b": "B", "c": None}
        assert task.error is None
        assert task.dead_letter is None
        assert task.owner is None

    @pytest.mark.asyncio
    async def test_each_step_sees_the_saved_results_of_the_steps_before_it(self, backend: Any) -> None:
        seen: dict[str, dict[str, Any]] = {}

        async def a(ctx: StepContext) -> dict[str, Any]:
            seen["a"] = dict(ctx.results)
            return {"n": 1, "tags": ["x"]}

        def b(ctx: StepContext) -> int:
            seen["b"] = dict(ctx.results)
            return int(ctx.results["a"]["n"]) + 1

        async def c(ctx: StepContext) -> list[Any]:
            seen["c"] = dict(ctx.results)
            return [ctx.results["b"], "done"]

        wf = Workflow("results").step("a", a).step("b", b).step("c", c)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf))
        first = {"n": 1, "tags": ["x"]}
        assert seen == {"a": {}, "b": {"a": first}, "c": {"a": first, "b": 2}}
        assert task.results == {"a": {"n": 1, "tags": ["x"]}, "b": 2, "c": [2, "done"]}

    @pytest.mark.asyncio
    async def test_sync_steps_run_in_a_worker_thread_and_async_steps_on_the_event_loop(
        self, backend: Any
    ) -> None:
        loop_thread = threading.get_ident()
        where: dict[str, Any] = {}

        async def on_loop(ctx: StepContext) -> None:
            where["async"] = threading.get_ident()

        def blocking(ctx: StepContext) -> None:
            where["sync"] = threading.get_ident()
            try:
                asyncio.get_running_loop()
                where["sync_on_loop"] = True
            except RuntimeError:
                where["sync_on_loop"] = False

        wf = Workflow("threads").step("on_loop", on_loop).step("blocking", blocking)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf))
        assert task.status is TaskStatus.COMPLETED
        assert where["async"] == loop_thread
        assert where["sync"] != loop_thread, "a sync step ran on the event loop's thread"
        assert where["sync_on_loop"] is False

    @pytest.mark.asyncio
    async def test_idempotency_key_is_task_id_and_step_name_and_stable_across_retries(
        self, backend: Any
    ) -> None:
        keys: dict[str, list[str]] = {"a": [], "b": []}

        async def a(ctx: StepContext) -> None:
            keys["a"].append(ctx.idempotency_key)

        def b(ctx: StepContext) -> None:
            keys["b"].append(ctx.idempotency_key)
            if ctx.attempt == 1:
                raise ConnectionError("flaky")

        wf = Workflow("keys", retry=RETRY_NOW).step("a", a).step("b", b)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            tid = await eng.submit(wf)
            task = await self.settled(eng, tid)
        assert task.status is TaskStatus.COMPLETED
        assert keys == {"a": [f"{tid}:a"], "b": [f"{tid}:b", f"{tid}:b"]}

    @pytest.mark.asyncio
    async def test_body_and_meta_round_trip_to_the_steps_and_the_stored_task(self, backend: Any) -> None:
        seen: list[tuple[bytes, dict[str, str], Any]] = []

        async def look(ctx: StepContext) -> None:
            seen.append((ctx.body, dict(ctx.task.meta), ctx.json() if ctx.body.startswith(b"{") else None))

        wf = Workflow("round-trip").step("look", look)
        eng = self.engine(backend, wf)
        meta = {"tenant": "acme", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "note": "ünïcødé ✓"}
        raw = bytes(range(256))
        async with self.running(eng):
            binary = await self.settled(eng, await eng.submit(wf, raw, meta=meta))
            as_json = await self.settled(eng, await eng.submit(wf, {"order": 1001, "items": ["a", "é"]}))
        assert binary.body == raw
        assert binary.meta == meta
        assert as_json.json() == {"order": 1001, "items": ["a", "é"]}
        assert as_json.meta == {}
        assert sorted(seen, key=lambda s: s[0]) == sorted(
            [(raw, meta, None), (as_json.body, {}, {"order": 1001, "items": ["a", "é"]})], key=lambda s: s[0]
        )

    # -- resume after a dead worker ----------------------------------------------------

    @pytest.mark.asyncio
    async def test_task_whose_worker_died_mid_step_resumes_at_that_step_with_earlier_results(
        self, backend: Any
    ) -> None:
        calls: list[tuple[str, int, dict[str, Any]]] = []

        def record(name: str, value: str) -> Any:
            async def fn(ctx: StepContext) -> str:
                calls.append((name, ctx.attempt, dict(ctx.results)))
                return value

            return fn

        wf = Workflow("resume")
        for name in "abc":
            wf.step(name, record(name, name.upper()))
        eng = self.engine(backend, wf)
        tid = await eng.submit(wf)
        await self._abandon(backend, wf.name, tid, step=1, results={"a": "A-from-the-dead-worker"})
        async with self.running(eng):
            task = await self.settled(eng, tid)
        assert task.status is TaskStatus.COMPLETED
        # `a` is not run again; `b` resumes on its second attempt (the dead worker's was the first).
        assert calls == [
            ("b", 2, {"a": "A-from-the-dead-worker"}),
            ("c", 1, {"a": "A-from-the-dead-worker", "b": "B"}),
        ]
        assert task.results == {"a": "A-from-the-dead-worker", "b": "B", "c": "C"}

    @pytest.mark.asyncio
    async def test_retry_whose_worker_died_before_releasing_it_still_waits_for_its_due_time(
        self, backend: Any
    ) -> None:
        started: list[float] = []

        async def flaky(ctx: StepContext) -> None:
            started.append(time.monotonic())

        wf = Workflow("retry-orphan").step("flaky", flaky)
        eng = self.engine(backend, wf)
        tid = await eng.submit(wf)
        # The dead worker wrote the retry (pending, due in 0.8 s) but never released its
        # lease with that delay; the lease expires at once and the task is delivered early.
        # Measured from when `due` is set: `_abandon` takes four round trips, which on a
        # loaded machine can eat into the 0.8 s.
        planned = time.monotonic()
        due = utcnow() + timedelta(seconds=0.8)
        await self._abandon(backend, wf.name, tid, status=TaskStatus.PENDING, owner=None, not_before=due)
        async with self.running(eng):
            task = await self.settled(eng, tid)
        assert task.status is TaskStatus.COMPLETED
        assert len(started) == 1
        assert started[0] - planned >= 0.8 - CLOCK_SLACK - 0.05, "the retry ran before its due time"

    @pytest.mark.asyncio
    async def test_step_longer_than_the_lease_keeps_its_lease_by_heartbeat_and_runs_once(
        self, backend: Any
    ) -> None:
        calls: list[int] = []

        async def slow(ctx: StepContext) -> None:
            calls.append(ctx.attempt)
            await asyncio.sleep(self.short_lease * 3)

        wf = Workflow("slow").step("slow", slow)
        eng = self.engine(backend, wf, lease=self.short_lease)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf))
        assert task.status is TaskStatus.COMPLETED
        assert calls == [1], "the step was re-delivered although its worker kept heartbeating"

    # -- fencing -----------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_zombie_write_with_a_stale_version_raises_conflict_and_changes_nothing(
        self, backend: Any
    ) -> None:
        async def a(ctx: StepContext) -> str:
            return "real"

        wf = Workflow("zombie").step("a", a)
        eng = self.engine(backend, wf)
        tid = await eng.submit(wf)
        zombie_claim, zombie = await self._abandon(backend, wf.name, tid, step=0)
        async with self.running(eng):
            done = await self.settled(eng, tid)
        assert done.status is TaskStatus.COMPLETED
        with pytest.raises(ConflictError):
            await backend.update(
                zombie.evolve(status=TaskStatus.COMPLETED, step=1, results={"a": "zombie"}), zombie.version
            )
        with pytest.raises(LeaseLostError):
            await backend.ack(zombie_claim)
        after = await backend.get(tid)
        assert after is not None
        assert (after.version, after.status, after.results) == (done.version, done.status, {"a": "real"})

    @pytest.mark.asyncio
    async def test_run_that_loses_its_task_to_another_owner_stops_and_runs_no_further_step(
        self, backend: Any
    ) -> None:
        started, go_on = asyncio.Event(), asyncio.Event()
        calls: list[str] = []

        async def a(ctx: StepContext) -> str:
            calls.append("a")
            started.set()
            await go_on.wait()
            return "A"

        async def b(ctx: StepContext) -> None:
            calls.append("b")

        wf = Workflow("takeover").step("a", a).step("b", b)
        # A lease far longer than the check: the fenced write alone must stop the run.
        eng = self.engine(backend, wf, lease=30.0)
        async with self.running(eng):
            tid = await eng.submit(wf)
            await self.wait_until(started.is_set, what="step a to start")
            current = await backend.get(tid)
            thief = await backend.update(
                current.evolve(owner="another-worker", attempt=current.attempt + 1), current.version
            )
            go_on.set()
        # Stopping drained the run: whatever it was going to do, it has done.
        assert calls == ["a"]
        after = await backend.get(tid)
        assert after is not None
        assert (after.version, after.owner) == (thief.version, "another-worker")
        assert (after.step, after.results) == (0, {})

    # -- retries -----------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_step_failing_twice_then_succeeding_completes_on_attempt_3(self, backend: Any) -> None:
        attempts: list[int] = []

        async def flaky(ctx: StepContext) -> str:
            attempts.append(ctx.attempt)
            if ctx.attempt < 3:
                raise ConnectionError(f"boom {ctx.attempt}")
            return "ok"

        policy = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)
        wf = Workflow("flaky").step("flaky", flaky, retry=policy)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf))
        assert task.status is TaskStatus.COMPLETED
        assert attempts == [1, 2, 3]
        assert task.attempt == 3
        assert task.results == {"flaky": "ok"}
        assert (task.error, task.failures) == (None, ()), "failures of a step are cleared once it succeeds"

    @pytest.mark.asyncio
    async def test_failures_are_visible_on_the_task_while_its_step_is_retried(self, backend: Any) -> None:
        third, finish = asyncio.Event(), asyncio.Event()

        async def flaky(ctx: StepContext) -> str:
            if ctx.attempt < 3:
                raise ConnectionError(f"boom {ctx.attempt}")
            third.set()
            await finish.wait()
            return "ok"

        wf = Workflow("visible").step("flaky", flaky, retry=RETRY_NOW)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            tid = await eng.submit(wf)
            await self.wait_until(third.is_set, what="the third attempt")
            during = await eng.get_task(tid)
            finish.set()
            await self.settled(eng, tid)
        assert during is not None
        assert during.status is TaskStatus.RUNNING
        assert during.attempt == 3
        assert during.error is not None
        assert (during.error.step, during.error.attempt, during.error.message) == ("flaky", 2, "boom 2")
        assert _type_name(during.error) == "ConnectionError"
        assert [(f.attempt, f.message) for f in during.failures] == [(1, "boom 1"), (2, "boom 2")]
        assert "ConnectionError" in during.failures[0].traceback

    @pytest.mark.asyncio
    async def test_backoff_between_attempts_follows_the_retry_policy(self, backend: Any) -> None:
        initial, multiplier = 0.2, 2.0
        starts: list[float] = []
        ends: list[float] = []

        async def flaky(ctx: StepContext) -> None:
            starts.append(time.monotonic())
            if ctx.attempt < 3:
                ends.append(time.monotonic())
                raise ConnectionError("again")

        policy = RetryPolicy(max_attempts=3, initial_delay=initial, multiplier=multiplier, jitter=0)
        wf = Workflow("backoff").step("flaky", flaky, retry=policy)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf))
        assert task.status is TaskStatus.COMPLETED
        assert len(starts) == 3
        for n, expected in enumerate((initial, initial * multiplier)):
            waited = starts[n + 1] - ends[n]
            assert expected - CLOCK_SLACK <= waited < expected + LATENESS, (
                f"attempt {n + 2} started {waited:.3f}s after attempt {n + 1} failed; "
                f"the policy asks for {expected:.3f}s"
            )

    @pytest.mark.asyncio
    async def test_only_exceptions_in_retry_on_are_retried(self, backend: Any) -> None:
        policy = RetryPolicy(max_attempts=3, initial_delay=0, jitter=0, retry_on=(ConnectionError,))
        calls: dict[str, list[int]] = {"wrong": [], "transient": []}

        async def wrong(ctx: StepContext) -> None:
            calls["wrong"].append(ctx.attempt)
            raise ValueError("bad input")

        async def transient(ctx: StepContext) -> None:
            calls["transient"].append(ctx.attempt)
            if ctx.attempt == 1:
                raise ConnectionError("reset")

        not_retried = Workflow("retry-on-wrong").step("wrong", wrong, retry=policy)
        retried = Workflow("retry-on-transient").step("transient", transient, retry=policy)
        eng = self.engine(backend, not_retried, retried)
        async with self.running(eng):
            failed = await self.settled(eng, await eng.submit(not_retried))
            done = await self.settled(eng, await eng.submit(retried))
        assert calls == {"wrong": [1], "transient": [1, 2]}
        assert failed.status is TaskStatus.FAILED
        assert failed.dead_letter == "step-failed"
        assert _type_name(failed.error) == "ValueError"
        assert done.status is TaskStatus.COMPLETED
        assert done.attempt == 2

    @pytest.mark.asyncio
    async def test_give_up_on_fails_at_once_even_when_retry_on_matches(self, backend: Any) -> None:
        calls: list[int] = []

        async def denied(ctx: StepContext) -> None:
            calls.append(ctx.attempt)
            raise PermissionError("card blocked")

        policy = RetryPolicy(max_attempts=5, initial_delay=0, jitter=0, give_up_on=(PermissionError,))
        wf = Workflow("give-up").step("denied", denied, retry=policy)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf))
        assert calls == [1]
        assert task.status is TaskStatus.FAILED
        assert task.dead_letter == "step-failed"
        assert task.error is not None
        assert task.error.message == "card blocked"
        assert [f.attempt for f in task.failures] == [1]

    @pytest.mark.asyncio
    async def test_retrying_task_is_pending_with_not_before_holds_no_lease_and_another_engine_takes_it(
        self, backend: Any
    ) -> None:
        delay = 1.0
        runs: list[tuple[str, int, float]] = []
        phase = ["first engine"]
        failed_at: list[Any] = []

        async def flaky(ctx: StepContext) -> None:
            runs.append((phase[0], ctx.attempt, time.monotonic()))
            if ctx.attempt == 1:
                failed_at.append(utcnow())
                raise ConnectionError("later")

        policy = RetryPolicy(max_attempts=2, initial_delay=delay, jitter=0)
        wf = Workflow("handover").step("flaky", flaky, retry=policy)
        # Both engines hold leases far longer than the check: only an unleased task moves on.
        first = self.engine(backend, wf, lease=30.0)
        async with self.running(first):
            tid = await first.submit(wf)

            async def waiting() -> Task | None:
                task = await first.get_task(tid)
                return task if task is not None and task.error is not None else None

            retrying = await self.wait_until(waiting, what="the first attempt to fail")
        assert retrying.status is TaskStatus.PENDING
        assert retrying.owner is None
        assert retrying.not_before is not None
        due = (retrying.not_before - failed_at[0]).total_seconds()
        assert delay - CLOCK_SLACK <= due < delay + LATENESS, f"not_before is {due:.3f}s after the failure"
        phase[0] = "second engine"
        second = self.engine(backend, wf, lease=30.0)
        async with self.running(second):
            task = await self.settled(second, tid)
        assert task.status is TaskStatus.COMPLETED
        assert task.attempt == 2
        assert [(who, attempt) for who, attempt, _ in runs] == [("first engine", 1), ("second engine", 2)]
        waited = runs[1][2] - runs[0][2]
        # The second engine starts after the first stopped, so allow its start-up too.
        assert delay - CLOCK_SLACK <= waited < delay + LATENESS + 1.0, f"retry ran {waited:.3f}s later"

    # -- timeouts ----------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_async_step_over_its_timeout_is_cancelled_and_counts_as_a_failed_attempt(
        self, backend: Any
    ) -> None:
        cancelled: list[int] = []

        async def slow(ctx: StepContext) -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(ctx.attempt)
                raise

        policy = RetryPolicy(max_attempts=2, initial_delay=0, jitter=0)
        wf = Workflow("timeout").step("slow", slow, timeout=0.2, retry=policy)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf))
        assert cancelled == [1, 2]
        assert task.status is TaskStatus.FAILED
        assert task.dead_letter == "step-failed"
        assert task.attempt == 2
        assert [_type_name(f) for f in task.failures] == ["StepTimeoutError", "StepTimeoutError"]
        assert task.error is not None
        assert "timeout" in task.error.message

    @pytest.mark.asyncio
    async def test_sync_step_overrunning_its_timeout_is_reported_and_not_waited_on(
        self, backend: Any
    ) -> None:
        release, asked_to_stop, returned = threading.Event(), threading.Event(), threading.Event()

        def stuck(ctx: StepContext) -> str:
            # Ignores ctx.cancelled on purpose: the engine must not wait for it anyway.
            while not release.wait(0.01):
                if ctx.cancelled:
                    asked_to_stop.set()
            returned.set()
            return "too late"

        wf = Workflow("stuck").step("stuck", stuck, timeout=0.3, retry=NO_RETRY)
        eng = self.engine(backend, wf)
        try:
            async with self.running(eng):
                tid = await eng.submit(wf)
                task = await self.settled(eng, tid, timeout=5.0)
                assert not returned.is_set(), "the step's thread finished; nothing shows it was not waited on"
            assert task.status is TaskStatus.FAILED
            assert task.dead_letter == "step-failed"
            assert _type_name(task.error) == "StepTimeoutError"
            # The thread looks at ctx.cancelled every 10 ms; the failure may be written sooner.
            assert await asyncio.to_thread(asked_to_stop.wait, 2.0), (
                "ctx.cancelled was not set for the overrunning thread"
            )
        finally:
            release.set()
        assert await asyncio.to_thread(returned.wait, 5.0)
        after = await eng.get_task(tid)
        assert after is not None
        assert (after.version, after.results) == (task.version, {}), (
            "the abandoned thread's late result was written"
        )

    # -- compensation ------------------------------------------------------------------

    def _saga(self, name: str, log: list[str], *, fail_at: str, seen: dict[str, Any] | None = None,
              failing_compensation: str | None = None, retry: RetryPolicy = NO_RETRY) -> Workflow:
        """Steps a, b, c, d, each with a compensation; step `fail_at` always raises."""

        def step(step_name: str) -> Any:
            async def fn(ctx: StepContext) -> dict[str, str]:
                log.append(step_name)
                if step_name == fail_at:
                    raise RuntimeError("card declined")
                return {"done": step_name}

            return fn

        def undo(step_name: str) -> Any:
            async def fn(ctx: StepContext) -> None:
                log.append(f"undo-{step_name}")
                if seen is not None:
                    seen[step_name] = (ctx.error, ctx.result, ctx.idempotency_key)
                if step_name == failing_compensation:
                    raise OSError("refund service down")

            return fn

        wf = Workflow(name, retry=retry)
        for s in "abcd":
            wf.step(s, step(s), compensate=undo(s))
        return wf

    @pytest.mark.asyncio
    async def test_failure_at_step_3_compensates_steps_2_then_1_once_each(self, backend: Any) -> None:
        log: list[str] = []
        seen: dict[str, Any] = {}
        wf = self._saga("saga", log, fail_at="c", seen=seen)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf))
        assert log == ["a", "b", "c", "undo-b", "undo-a"]
        assert task.status is TaskStatus.COMPENSATED
        assert task.dead_letter == "step-failed"
        assert task.compensated == ("b", "a")
        assert task.error is not None
        assert (task.error.step, task.error.message) == ("c", "card declined")
        assert task.results == {"a": {"done": "a"}, "b": {"done": "b"}}

    @pytest.mark.asyncio
    async def test_compensations_receive_the_error_their_steps_result_and_their_own_key(
        self, backend: Any
    ) -> None:
        log: list[str] = []
        seen: dict[str, Any] = {}
        wf = self._saga("saga-context", log, fail_at="c", seen=seen)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            tid = await eng.submit(wf)
            await self.settled(eng, tid)
        assert set(seen) == {"a", "b"}
        for name in ("a", "b"):
            error, result, key = seen[name]
            assert result == {"done": name}
            # Not the step's own key: an API deduplicating on it would take the refund for
            # a replay of the charge.
            assert key == f"{tid}:{name}:compensate"
            assert (error.step, error.message, _type_name(error)) == ("c", "card declined", "RuntimeError")

    @pytest.mark.asyncio
    async def test_failing_compensation_stops_the_rollback_and_dead_letters_compensation_failed(
        self, backend: Any
    ) -> None:
        log: list[str] = []
        twice = RetryPolicy(max_attempts=2, initial_delay=0, jitter=0)
        wf = self._saga("saga-broken", log, fail_at="c", failing_compensation="b", retry=twice)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf))
        assert log == ["a", "b", "c", "c", "undo-b"]
        assert task.status is TaskStatus.FAILED
        assert task.dead_letter == "compensation-failed"
        assert task.error is not None
        assert (task.error.step, task.error.message) == ("b", "refund service down")
        assert [(f.step, f.attempt, f.message) for f in task.failures] == [
            ("c", 1, "card declined"), ("c", 2, "card declined")
        ], "the failures that started the rollback were lost"
        listed = (await eng.dead_letters(wf.name)).tasks
        assert [t.id for t in listed] == [task.id]

    @pytest.mark.asyncio
    async def test_worker_lost_during_compensation_resumes_it_without_rerunning_finished_compensations(
        self, backend: Any
    ) -> None:
        log: list[str] = []
        first_undo_a_cancelled = asyncio.Event()
        never = asyncio.Event()

        async def step(ctx: StepContext) -> str:
            log.append(ctx.step)
            if ctx.step == "c":
                raise RuntimeError("card declined")
            return ctx.step

        async def undo(ctx: StepContext) -> None:
            log.append(f"undo-{ctx.step}")
            if ctx.step == "a" and log.count("undo-a") == 1:
                try:
                    await never.wait()  # this worker "dies" here
                except asyncio.CancelledError:
                    first_undo_a_cancelled.set()
                    raise

        wf = (Workflow("saga-crash", retry=NO_RETRY)
              .step("a", step, compensate=undo).step("b", step, compensate=undo).step("c", step))
        eng = self.engine(backend, wf)
        async with self.running(eng):
            tid = await eng.submit(wf)
            await self.wait_until(lambda: "undo-a" in log, what="compensation of a to start")
            midway = await eng.get_task(tid)
            await self.expire_lease(backend, await self._engine_claim(eng, tid))
            task = await self.settled(eng, tid)
            await self.wait_until(first_undo_a_cancelled.is_set, what="the lost run to stop")
        assert midway is not None
        assert midway.status is TaskStatus.COMPENSATING
        assert midway.compensated == ("b",)
        assert log == ["a", "b", "c", "undo-b", "undo-a", "undo-a"]
        assert task.status is TaskStatus.COMPENSATED
        assert task.compensated == ("b", "a")

    # -- dead letters ------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_task_that_failed_for_good_is_listed_in_dead_letters_with_its_reason(
        self, backend: Any
    ) -> None:
        async def broken(ctx: StepContext) -> None:
            raise RuntimeError("always")

        async def fine(ctx: StepContext) -> None:
            return None

        bad = Workflow("dead").step("broken", broken, retry=NO_RETRY)
        good = Workflow("alive").step("fine", fine)
        eng = self.engine(backend, bad, good)
        async with self.running(eng):
            failed = await self.settled(eng, await eng.submit(bad))
            await self.settled(eng, await eng.submit(good))
        everywhere = (await eng.dead_letters()).tasks
        assert [(t.id, t.dead_letter) for t in everywhere] == [(failed.id, "step-failed")]
        assert [t.id for t in (await eng.dead_letters(bad.name)).tasks] == [failed.id]
        assert (await eng.dead_letters(good.name)).tasks == []
        assert everywhere[0].error is not None
        assert everywhere[0].error.message == "always"

    @pytest.mark.asyncio
    async def test_requeued_task_resumes_at_the_failed_step_without_rerunning_earlier_steps(
        self, backend: Any
    ) -> None:
        calls: list[str] = []

        async def a(ctx: StepContext) -> str:
            calls.append("a")
            return f"A{len(calls)}"

        async def b(ctx: StepContext) -> str:
            calls.append("b")
            if calls.count("b") == 1:
                raise RuntimeError("not yet")
            return "B"

        wf = Workflow("requeue").step("a", a).step("b", b, retry=NO_RETRY)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            tid = await eng.submit(wf)
            failed = await self.settled(eng, tid)
            assert failed.status is TaskStatus.FAILED
            assert failed.step == 1
            again = await eng.requeue(tid)
            assert again.status is TaskStatus.PENDING
            assert again.dead_letter is None
            assert again.step == 1
            task = await self.settled(eng, tid)
        assert calls == ["a", "b", "b"]
        assert task.status is TaskStatus.COMPLETED
        assert task.results == {"a": "A1", "b": "B"}
        assert (await eng.dead_letters(wf.name)).tasks == []

    @pytest.mark.asyncio
    async def test_requeue_from_step_reruns_from_that_step_and_keeps_results_before_it(
        self, backend: Any
    ) -> None:
        calls: list[str] = []

        def step(name: str) -> Any:
            async def fn(ctx: StepContext) -> str:
                calls.append(name)
                if name == "c" and calls.count("c") == 1:
                    raise RuntimeError("stale data from b")
                return f"{name}{calls.count(name)}"

            return fn

        wf = Workflow("requeue-from", retry=NO_RETRY)
        for name in "abc":
            wf.step(name, step(name))
        eng = self.engine(backend, wf)
        async with self.running(eng):
            tid = await eng.submit(wf)
            await self.settled(eng, tid)
            with pytest.raises(ValueError, match="no step named"):
                await eng.requeue(tid, from_step="nope")
            again = await eng.requeue(tid, from_step="b")
            assert again.step == 1
            assert again.results == {"a": "a1"}
            task = await self.settled(eng, tid)
        assert calls == ["a", "b", "c", "b", "c"]
        assert task.status is TaskStatus.COMPLETED
        assert task.results == {"a": "a1", "b": "b2", "c": "c2"}

    @pytest.mark.asyncio
    async def test_discard_deletes_a_dead_letter_for_good(self, backend: Any) -> None:
        async def broken(ctx: StepContext) -> None:
            raise RuntimeError("always")

        wf = Workflow("discard").step("broken", broken, retry=NO_RETRY)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            tid = await eng.submit(wf)
            await self.settled(eng, tid)
        assert await eng.discard(tid) is True
        assert await eng.get_task(tid) is None
        assert (await eng.dead_letters()).tasks == []
        assert await eng.discard(tid) is False

    @pytest.mark.asyncio
    async def test_requeue_or_discard_of_an_unfinished_or_completed_task_raises_invalid_state(
        self, backend: Any
    ) -> None:
        async def fine(ctx: StepContext) -> None:
            return None

        wf = Workflow("not-failed").step("fine", fine)
        eng = self.engine(backend, wf)
        pending = await eng.submit(wf)
        before = await eng.get_task(pending)
        with pytest.raises(InvalidStateError):
            await eng.requeue(pending)
        with pytest.raises(InvalidStateError):
            await eng.discard(pending)
        after = await eng.get_task(pending)
        assert before is not None
        assert after is not None
        assert after.version == before.version
        async with self.running(eng):
            completed = await self.settled(eng, pending)
        with pytest.raises(InvalidStateError):
            await eng.requeue(completed.id)
        final = await eng.get_task(completed.id)
        assert final is not None
        assert final.version == completed.version

    # -- cancellation ------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_cancelled_pending_task_never_runs(self, backend: Any) -> None:
        ran: list[str] = []

        async def step(ctx: StepContext) -> None:
            ran.append(ctx.task.id)

        wf = Workflow("cancel-pending").step("step", step)
        eng = self.engine(backend, wf)
        doomed = await eng.submit(wf)
        cancelled = await eng.cancel(doomed)
        assert cancelled.status is TaskStatus.CANCELLED
        after_it = await eng.submit(wf)
        async with self.running(eng):
            await self.settled(eng, after_it)
        # Stopping drained every run. The cancelled task was delivered before the one
        # submitted after it and acked on sight, so the queue holds nothing more.
        assert ran == [after_it]
        assert await backend.claim(wf.name, lease=5.0, wait=0) is None, "the cancelled task is still queued"
        final = await eng.get_task(doomed)
        assert final is not None
        assert final.status is TaskStatus.CANCELLED
        assert final.results == {}

    @pytest.mark.asyncio
    async def test_cancelling_a_running_async_step_cancels_it_and_compensates(self, backend: Any) -> None:
        log: list[str] = []
        started = asyncio.Event()

        async def a(ctx: StepContext) -> str:
            log.append("a")
            return "A"

        async def undo_a(ctx: StepContext) -> None:
            log.append("undo-a")

        async def b(ctx: StepContext) -> None:
            log.append("b")
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                log.append("b-cancelled")
                raise

        async def c(ctx: StepContext) -> None:
            log.append("c")

        wf = Workflow("cancel-async").step("a", a, compensate=undo_a).step("b", b).step("c", c)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            tid = await eng.submit(wf)
            await self.wait_until(started.is_set, what="step b to start")
            await eng.cancel(tid)
            task = await self.settled(eng, tid)
        assert log == ["a", "b", "b-cancelled", "undo-a"]
        assert task.status is TaskStatus.CANCELLED
        assert task.compensated == ("a",)
        assert _type_name(task.error) == "StepCancelledError"
        assert task.results == {"a": "A"}

    @pytest.mark.asyncio
    async def test_cancelling_a_running_sync_step_sets_ctx_cancelled_and_compensates(
        self, backend: Any
    ) -> None:
        log: list[str] = []
        started = threading.Event()

        def a(ctx: StepContext) -> str:
            log.append("a")
            return "A"

        def undo_a(ctx: StepContext) -> None:
            log.append("undo-a")

        def b(ctx: StepContext) -> str:
            started.set()
            give_up = time.monotonic() + 10
            while not ctx.cancelled and time.monotonic() < give_up:
                time.sleep(0.01)
            log.append(f"b saw cancelled={ctx.cancelled}")
            return "B"

        wf = Workflow("cancel-sync").step("a", a, compensate=undo_a).step("b", b)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            tid = await eng.submit(wf)
            await self.wait_until(started.is_set, what="step b to start")
            await eng.cancel(tid)
            task = await self.settled(eng, tid)
            await self.wait_until(lambda: len(log) == 3, what="step b to return")
        assert sorted(log) == sorted(["a", "b saw cancelled=True", "undo-a"])
        assert task.status is TaskStatus.CANCELLED
        assert task.compensated == ("a",)
        assert "b" not in task.results

    # -- idempotent submit -------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_fifty_concurrent_submits_with_one_idempotency_key_create_one_task(
        self, backend: Any
    ) -> None:
        async def step(ctx: StepContext) -> None:
            return None

        wf = Workflow("dedup").step("step", step)
        eng = self.engine(backend, wf)
        ids = await asyncio.gather(
            *(eng.submit(wf, {"n": n}, idempotency_key="order-1001") for n in range(50))
        )
        assert len(set(ids)) == 1, f"{len(set(ids))} different task ids for one idempotency key"
        listed = (await eng.list_tasks(workflow=wf.name)).tasks
        assert [t.id for t in listed] == [ids[0]]
        assert listed[0].idempotency_key == "order-1001"
        claims = await self.drain(backend, wf.name)
        assert [c.task_id for c in claims] == [ids[0]], "a duplicate submit was queued"

    @pytest.mark.asyncio
    async def test_same_idempotency_key_in_another_workflow_is_a_different_task(self, backend: Any) -> None:
        async def step(ctx: StepContext) -> None:
            return None

        orders = Workflow("orders").step("step", step)
        refunds = Workflow("refunds").step("step", step)
        eng = self.engine(backend, orders, refunds)
        first = await eng.submit(orders, idempotency_key="1001")
        other = await eng.submit(refunds, idempotency_key="1001")
        assert first != other
        assert await eng.submit(orders, idempotency_key="1001") == first
        assert await eng.submit(refunds, idempotency_key="1001") == other
        assert [t.id for t in (await eng.list_tasks(workflow="orders")).tasks] == [first]
        assert [t.id for t in (await eng.list_tasks(workflow="refunds")).tasks] == [other]

    # -- delays ------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_submit_with_delay_is_not_delivered_before_the_delay(self, backend: Any) -> None:
        started: list[float] = []

        async def step(ctx: StepContext) -> None:
            started.append(time.monotonic())

        wf = Workflow("delayed").step("step", step)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            submitted = time.monotonic()
            tid = await eng.submit(wf, delay=0.5)
            stored = await eng.get_task(tid)
            task = await self.settled(eng, tid)
        assert stored is not None
        assert stored.not_before is not None
        assert task.status is TaskStatus.COMPLETED
        assert started[0] - submitted >= 0.5 - CLOCK_SLACK, f"ran {started[0] - submitted:.3f}s after submit"

    @pytest.mark.asyncio
    async def test_submit_with_not_before_is_not_delivered_before_that_time(self, backend: Any) -> None:
        started: list[Any] = []

        async def step(ctx: StepContext) -> None:
            started.append(utcnow())

        wf = Workflow("scheduled").step("step", step)
        eng = self.engine(backend, wf)
        not_before = utcnow() + timedelta(seconds=0.5)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf, not_before=not_before))
        assert task.status is TaskStatus.COMPLETED
        early = (not_before - started[0]).total_seconds()
        assert early <= CLOCK_SLACK, f"ran {early:.3f}s before not_before"

    # -- retention ---------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_purge_deletes_only_terminal_tasks_older_than_the_cutoff(self, backend: Any) -> None:
        async def step(ctx: StepContext) -> None:
            if ctx.body == b"fail":
                raise RuntimeError("fails")

        wf = Workflow("retention").step("step", step, retry=NO_RETRY)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            old_done = await self.settled(eng, await eng.submit(wf, "ok"))
            old_failed = await self.settled(eng, await eng.submit(wf, "fail"))
            waiting = await eng.submit(wf, "ok", delay=60)
            await asyncio.sleep(0.05)  # separates the cutoff from both sides on coarse clocks
            cutoff = utcnow()
            await asyncio.sleep(0.05)
            new_done = await self.settled(eng, await eng.submit(wf, "ok"))
        assert (old_done.status, old_failed.status) == (TaskStatus.COMPLETED, TaskStatus.FAILED)
        assert await eng.purge(cutoff, statuses=[TaskStatus.COMPLETED]) == 1
        assert await eng.get_task(old_done.id) is None
        assert await eng.purge(cutoff) == 1
        assert await eng.get_task(old_failed.id) is None
        remaining = {t.id for t in (await eng.list_tasks(workflow=wf.name)).tasks}
        assert remaining == {waiting, new_done.id}

    @pytest.mark.asyncio
    async def test_purge_refuses_non_terminal_statuses_and_deletes_nothing(self, backend: Any) -> None:
        async def step(ctx: StepContext) -> None:
            return None

        wf = Workflow("retention-refused").step("step", step)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            done = await self.settled(eng, await eng.submit(wf))
        pending = await eng.submit(wf, delay=60)
        future = utcnow() + timedelta(days=1)
        for statuses in ([TaskStatus.PENDING], [TaskStatus.COMPLETED, TaskStatus.RUNNING]):
            with pytest.raises(ValueError, match="not terminal"):
                await eng.purge(future, statuses=statuses)
        assert {t.id for t in (await eng.list_tasks(workflow=wf.name)).tasks} == {done.id, pending}

    # -- bad input ---------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_submit_to_an_unknown_workflow_raises_and_stores_nothing(self, backend: Any) -> None:
        async def step(ctx: StepContext) -> None:
            return None

        eng = self.engine(backend, Workflow("known").step("step", step))
        with pytest.raises(UnknownWorkflowError, match=r"'ghost'.*register"):
            await eng.submit("ghost", b"body")
        assert (await backend.list()).tasks == []
        assert await backend.claim("ghost", lease=5.0, wait=0) is None

    @pytest.mark.asyncio
    async def test_body_over_max_payload_bytes_raises_and_stores_nothing(self, backend: Any) -> None:
        async def step(ctx: StepContext) -> None:
            return None

        wf = Workflow("sized").step("step", step)
        eng = self.engine(backend, wf, max_payload_bytes=1024)
        with pytest.raises(PayloadTooLargeError, match=r"1025 bytes.*1024"):
            await eng.submit(wf, b"x" * 1025)
        assert (await backend.list()).tasks == []
        assert await backend.claim(wf.name, lease=5.0, wait=0) is None
        fits = await eng.submit(wf, b"x" * 1024)
        assert [t.id for t in (await backend.list()).tasks] == [fits]

    @pytest.mark.asyncio
    async def test_step_returning_an_unserialisable_value_fails_at_once_and_loses_nothing(
        self, backend: Any
    ) -> None:
        calls: list[str] = []

        async def a(ctx: StepContext) -> str:
            calls.append("a")
            return "A"

        async def b(ctx: StepContext) -> Any:
            calls.append("b")
            return {"when": object()}

        wf = Workflow("unserialisable").step("a", a).step("b", b, retry=RETRY_NOW)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf, b"precious", meta={"k": "v"}))
        assert calls == ["a", "b"], "a result that can never be stored was retried"
        assert task.status is TaskStatus.FAILED
        assert task.dead_letter == "step-failed"
        assert _type_name(task.error) == "StepResultError"
        assert task.error is not None
        assert "'b'" in task.error.message
        assert "JSON" in task.error.message
        assert (task.body, task.meta, task.results, task.step) == (b"precious", {"k": "v"}, {"a": "A"}, 1)

    @pytest.mark.asyncio
    async def test_step_result_over_max_payload_bytes_fails_at_once_and_loses_nothing(
        self, backend: Any
    ) -> None:
        calls: list[int] = []

        async def big(ctx: StepContext) -> str:
            calls.append(ctx.attempt)
            return "x" * 2048

        wf = Workflow("big-result").step("big", big, retry=RETRY_NOW)
        eng = self.engine(backend, wf, max_payload_bytes=1024)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf, b"body"))
        assert calls == [1]
        assert task.status is TaskStatus.FAILED
        assert _type_name(task.error) == "PayloadTooLargeError"
        assert task.body == b"body"
        assert task.results == {}

    @pytest.mark.asyncio
    async def test_corrupt_record_is_dead_lettered_with_its_raw_bytes_and_the_worker_keeps_going(
        self, backend: Any
    ) -> None:
        ran: list[str] = []

        async def step(ctx: StepContext) -> None:
            ran.append(ctx.task.id)

        wf = Workflow("corrupt").step("step", step)
        eng = self.engine(backend, wf)
        raw = b'\x00\xffnot a record {"format": 1'
        broken = await eng.submit(wf)
        await self.corrupt_record(backend, broken, raw)
        healthy = await eng.submit(wf)

        async def quarantined() -> Task | None:
            try:
                task = await eng.get_task(broken)
            except CorruptRecordError:
                return None
            return task if task is not None and task.status.terminal else None

        async with self.running(eng):
            await self.settled(eng, healthy)
            task = await self.wait_until(quarantined, what="the corrupt record to be dead-lettered")
            later = await self.settled(eng, await eng.submit(wf))
        assert task.status is TaskStatus.FAILED
        assert task.dead_letter == "corrupt-record"
        assert task.body == raw, "the raw bytes of the corrupt record were not kept"
        assert task.error is not None
        assert task.error.message
        assert broken in [t.id for t in (await eng.dead_letters()).tasks]
        assert ran == [healthy, later.id]
        with pytest.raises(InvalidStateError, match="corrupt"):
            await eng.requeue(broken)

    @pytest.mark.asyncio
    async def test_record_naming_another_workflow_than_its_queue_is_dead_lettered(self, backend: Any) -> None:
        ran: list[str] = []

        async def step(ctx: StepContext) -> None:
            ran.append(ctx.task.id)

        wf = Workflow("mislabelled").step("step", step)
        eng = self.engine(backend, wf)
        tid = await eng.submit(wf)
        stored = await eng.get_task(tid)
        assert stored is not None
        await self.corrupt_record(backend, tid, encode_task(stored.evolve(workflow="ghost")))
        async with self.running(eng):
            task = await self.settled(eng, tid)
        assert ran == []
        assert task.status is TaskStatus.FAILED
        assert task.dead_letter == "unknown-workflow"
        assert task.error is not None
        assert "ghost" in task.error.message
        assert task.workflow == wf.name, "the dead letter is not listed under the queue it came from"
        assert tid in [t.id for t in (await eng.dead_letters()).tasks]

    @pytest.mark.asyncio
    async def test_task_resumed_by_a_workflow_whose_completed_steps_changed_is_dead_lettered(
        self, backend: Any
    ) -> None:
        ran: list[str] = []

        async def step(ctx: StepContext) -> str:
            ran.append(ctx.step)
            return ctx.step

        before = Workflow("deploy").step("a", step).step("b", step).step("c", step)
        after = Workflow("deploy").step("renamed", step).step("b", step).step("c", step)
        old = self.engine(backend, before)
        tid = await old.submit(before)
        await self._abandon(backend, before.name, tid, step=1, results={"a": "a"})
        new = self.engine(backend, after)
        async with self.running(new):
            task = await self.settled(new, tid)
        assert ran == [], "a step ran on top of results from a different workflow"
        assert task.status is TaskStatus.FAILED
        assert task.dead_letter == "workflow-changed"
        assert task.results == {"a": "a"}

    @pytest.mark.asyncio
    async def test_task_resumed_by_a_workflow_that_lost_its_remaining_steps_is_dead_lettered(
        self, backend: Any
    ) -> None:
        ran: list[str] = []

        async def step(ctx: StepContext) -> str:
            ran.append(ctx.step)
            return ctx.step

        before = Workflow("shrunk").step("a", step).step("b", step)
        after = Workflow("shrunk").step("a", step)
        old = self.engine(backend, before)
        tid = await old.submit(before)
        await self._abandon(backend, before.name, tid, step=1, results={"a": "a"})
        new = self.engine(backend, after)
        async with self.running(new):
            task = await self.settled(new, tid)
        assert ran == []
        assert task.status is TaskStatus.FAILED
        assert task.dead_letter == "workflow-changed"

    # -- poison steps ------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_step_whose_worker_dies_every_attempt_is_dead_lettered_worker_lost(
        self, backend: Any
    ) -> None:
        attempts: list[int] = []
        never = asyncio.Event()

        async def poison(ctx: StepContext) -> None:
            attempts.append(ctx.attempt)
            await never.wait()  # the worker "dies" here; the check expires its lease

        wf = Workflow("poison").step("poison", poison, retry=RetryPolicy(max_attempts=3, initial_delay=0))
        eng = self.engine(backend, wf)
        async with self.running(eng):
            tid = await eng.submit(wf)
            for n in (1, 2, 3):
                await self.wait_until(functools.partial(_has_length, attempts, n), what=f"delivery {n}")
                await self.expire_lease(backend, await self._engine_claim(eng, tid))
            task = await self.settled(eng, tid)
        assert attempts == [1, 2, 3]
        assert task.status is TaskStatus.FAILED
        assert task.dead_letter == "worker-lost"
        assert task.error is not None
        assert task.error.step == "poison"

    # -- graceful shutdown -------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_stop_lets_a_running_step_finish_within_drain_timeout(self, backend: Any) -> None:
        started = asyncio.Event()
        calls: list[int] = []

        async def step(ctx: StepContext) -> str:
            calls.append(ctx.attempt)
            started.set()
            await asyncio.sleep(0.3)
            return "finished"

        wf = Workflow("drain").step("step", step)
        eng = self.engine(backend, wf, drain_timeout=5.0)
        async with self.running(eng):
            tid = await eng.submit(wf)
            await self.wait_until(started.is_set, what="the step to start")
        task = await eng.get_task(tid)
        assert task is not None
        assert task.status is TaskStatus.COMPLETED
        assert calls == [1]
        assert task.results == {"step": "finished"}

    @pytest.mark.asyncio
    async def test_step_overrunning_drain_timeout_is_released_and_another_engine_resumes_it_at_once(
        self, backend: Any
    ) -> None:
        calls: list[tuple[str, int]] = []
        started = asyncio.Event()

        async def a(ctx: StepContext) -> str:
            calls.append(("a", ctx.attempt))
            return "A"

        async def b(ctx: StepContext) -> str:
            calls.append(("b", ctx.attempt))
            if len(calls) == 2:
                started.set()
                await asyncio.sleep(30)
            return "B"

        wf = Workflow("release").step("a", a).step("b", b)
        # Leases far longer than the check: only an explicit release lets the second engine in.
        first = self.engine(backend, wf, lease=30.0, drain_timeout=0.2)
        async with self.running(first):
            tid = await first.submit(wf)
            await self.wait_until(started.is_set, what="step b to start")
        released = await first.get_task(tid)
        assert released is not None
        assert released.status is TaskStatus.PENDING
        assert released.owner is None
        second = self.engine(backend, wf, lease=30.0)
        async with self.running(second):
            task = await self.settled(second, tid, timeout=5.0)
        assert task.status is TaskStatus.COMPLETED
        # Shutdown is not the step's fault: the resumed attempt has the same number.
        assert calls == [("a", 1), ("b", 1), ("b", 1)]

    @pytest.mark.asyncio
    async def test_stop_before_run_gets_going_still_stops_it_and_the_engine_can_run_again(
        self, backend: Any
    ) -> None:
        async def step(ctx: StepContext) -> None:
            return None

        wf = Workflow("restart").step("step", step)
        eng = self.engine(backend, wf)
        await eng.open()  # held open across both runs, so the fixture's backend stays open
        worker = asyncio.create_task(eng.run(handle_signals=False))
        eng.stop()  # before the task has even started
        await asyncio.wait_for(worker, 10)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf))
        assert task.status is TaskStatus.COMPLETED

    @pytest.mark.asyncio
    async def test_stop_returns_within_100_ms_while_workers_wait_in_claim(self, backend: Any) -> None:
        async def step(ctx: StepContext) -> None:
            return None

        wf = Workflow("idle-stop").step("step", step)
        eng = self.engine(backend, wf, poll_interval=30.0)
        await eng.open()  # held open, so the fixture's backend stays open after run() closes
        took: list[float] = []
        for _ in range(STOP_ROUNDS):
            worker = asyncio.create_task(eng.run(handle_signals=False))
            try:
                await asyncio.sleep(0.25)  # the claim loops are now waiting in claim(wait=30)
                assert not worker.done(), "run() returned before it was stopped"
                asked = time.monotonic()
                eng.stop()
                done, _ = await asyncio.wait({worker}, timeout=STOP_WITHIN + 2.0)
                took.append(time.monotonic() - asked)
            finally:
                if not worker.done():
                    worker.cancel()  # a broken engine: do not wait out its 30 s claims
                    await asyncio.gather(worker, return_exceptions=True)
            assert done, (
                f"run() had not returned {took[-1]:.1f}s after stop() while its workers waited in "
                f"claim with poll_interval=30; it must return within {STOP_WITHIN * 1000:.0f} ms"
            )
            worker.result()
        median = sorted(took)[len(took) // 2]
        assert median <= STOP_WITHIN, (
            f"run() returned {', '.join(f'{t * 1000:.0f}' for t in took)} ms after stop() (median "
            f"{median * 1000:.0f} ms) while its workers waited in claim with poll_interval=30; it "
            f"must return within {STOP_WITHIN * 1000:.0f} ms: a stop must interrupt an idle claim "
            "wait, not wait it out"
        )

    # -- contract holes: requeue races, undecodable text, BaseExceptions, bad input ------

    @pytest.mark.asyncio
    async def test_requeued_task_runs_although_a_stale_claimer_acks_its_claim_from_before(
        self, backend: Any
    ) -> None:
        ran: list[int] = []

        async def step(ctx: StepContext) -> None:
            ran.append(ctx.attempt)

        wf = Workflow("requeue-race").step("step", step)
        eng = self.engine(backend, wf)
        tid = await eng.submit(wf, delay=0.1)
        assert (await eng.cancel(tid)).status is TaskStatus.CANCELLED
        # A worker claims the cancelled task (its queue entry stays until someone acks it),
        # reads it as terminal, and is slow to ack: meanwhile the task is requeued.
        stale = await self.claim_soon(backend, wf.name, lease=30.0, wait=3.0)
        assert stale.task_id == tid
        await eng.requeue(tid)
        try:
            await backend.ack(stale)
        except LeaseLostError:
            pass  # requeue voided the old lease: the right outcome
        async with self.running(eng):
            task = await self.settled(eng, tid, timeout=5.0, what=(
                f"requeued task {tid} to run although a stale claimer acked its claim from before "
                "the requeue (requeue must void earlier leases, or the stale ack removes the task's "
                "only queue entry)"
            ))
        assert task.status is TaskStatus.COMPLETED
        assert ran == [1]

    @pytest.mark.asyncio
    async def test_requeued_task_submitted_with_a_long_delay_runs_at_once(self, backend: Any) -> None:
        ran: list[str] = []

        async def step(ctx: StepContext) -> None:
            ran.append(ctx.task.id)

        wf = Workflow("requeue-delayed").step("step", step)
        eng = self.engine(backend, wf)
        tid = await eng.submit(wf, delay=3600)
        assert (await eng.cancel(tid)).status is TaskStatus.CANCELLED
        again = await eng.requeue(tid)
        assert again.not_before is None
        async with self.running(eng):
            task = await self.settled(eng, tid, timeout=5.0, what=(
                f"requeued task {tid} to run at once (it was submitted with delay=3600 and cancelled; "
                "requeue must replace the old due time, not keep it)"
            ))
        assert task.status is TaskStatus.COMPLETED
        assert ran == [tid]

    @pytest.mark.asyncio
    async def test_exception_message_with_a_lone_surrogate_is_recorded_as_a_failure(
        self, backend: Any
    ) -> None:
        # What os.fsdecode makes of an undecodable byte in a file name: UTF-8 cannot hold it.
        message = "bad name: " + b"\xff".decode("utf-8", "surrogateescape")

        async def step(ctx: StepContext) -> None:
            raise ValueError(message)

        wf = Workflow("surrogate").step("step", step, retry=NO_RETRY)
        eng = self.engine(backend, wf, lease=1.0)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf))
        recorded = (task.status, task.dead_letter, _type_name(task.error))
        assert recorded == (TaskStatus.FAILED, "step-failed", "ValueError"), (
            f"a step raising ValueError({message!r}) ended as {recorded}: its failure could not be "
            "written (UTF-8 cannot encode a lone surrogate) and the task was left to its lease"
        )
        assert task.error is not None
        kept = task.error.message
        assert kept.startswith("bad name: "), f"the message was not kept: {kept!r}"
        rest = kept[len("bad name: "):]
        assert rest == "\udcff" or "dcff" in rest or "xff" in rest.lower(), (
            f"the undecodable byte was dropped from the message instead of escaped: {kept!r}"
        )

    @pytest.mark.asyncio
    async def test_step_raising_a_base_exception_fails_by_its_retry_policy_and_the_worker_goes_on(
        self, backend: Any
    ) -> None:
        calls: Counter[str] = Counter()
        kinds: dict[str, type[BaseException]] = {}

        def raising(name: str, kind: type[BaseException], run_async: bool) -> Any:
            def sync_step(ctx: StepContext) -> None:
                calls[name] += 1
                raise kind(f"{name}: raised by the step")

            async def async_step(ctx: StepContext) -> None:
                sync_step(ctx)

            return async_step if run_async else sync_step

        policy = RetryPolicy(max_attempts=2, initial_delay=0, jitter=0)
        failing: list[Workflow] = []
        variants: list[tuple[type[BaseException], bool]] = [
            (k, False) for k in (SystemExit, KeyboardInterrupt, GeneratorExit, _Abort)
        ]
        variants += [(k, True) for k in (SystemExit, KeyboardInterrupt, GeneratorExit, _Abort)]
        variants.append((asyncio.CancelledError, True))
        for kind, run_async in variants:
            name = f"{kind.__name__}-{'async' if run_async else 'sync'}"
            kinds[name] = kind
            failing.append(Workflow(name).step("step", raising(name, kind, run_async), retry=policy))

        async def fine(ctx: StepContext) -> str:
            return "ok"

        healthy = Workflow("unaffected").step("fine", fine)
        eng = self.engine(backend, *failing, healthy, concurrency=1, lease=1.0)
        escaped: list[BaseException] = []
        with _contained(escaped):
            async with self.running(eng):
                first = await eng.submit(healthy)
                submitted = {wf.name: await eng.submit(wf) for wf in failing}
                ended = {name: await self.settled(eng, tid) for name, tid in submitted.items()}
                worker_alive = not self._workers()[eng].done()
                later = await self.settled(eng, await eng.submit(healthy))
                before = await self.settled(eng, first)
        assert not escaped, (
            f"{sorted({type(e).__name__ for e in escaped})} raised by steps escaped the engine's "
            "tasks (asyncio lets KeyboardInterrupt and SystemExit out of the event loop, which "
            "ends the worker process); the engine must record them as the step's failure"
        )
        wrong = []
        for name, task in ended.items():
            seen = (task.status.value, task.dead_letter, _type_name(task.error), task.attempt, calls[name])
            if seen != ("failed", "step-failed", kinds[name].__name__, 2, 2):
                wrong.append(f"{name}: (status, dead letter, error type, attempt, calls) = {seen}")
        assert not wrong, (
            "a step raising a BaseException must be recorded as a failure of that type and follow "
            "its RetryPolicy (max_attempts=2: called twice, then failed, 'step-failed'):\n  "
            + "\n  ".join(wrong)
        )
        assert worker_alive, "engine.run() ended after steps raised BaseExceptions"
        assert (before.status, later.status) == (TaskStatus.COMPLETED, TaskStatus.COMPLETED)

    @pytest.mark.asyncio
    async def test_compensation_raising_system_exit_fails_the_task_after_one_call(self, backend: Any) -> None:
        calls: Counter[str] = Counter()

        async def a(ctx: StepContext) -> str:
            return "A"

        def undo_sync(ctx: StepContext) -> None:
            calls[ctx.task.workflow] += 1
            raise SystemExit("compensation exits")

        async def undo_async(ctx: StepContext) -> None:
            undo_sync(ctx)

        async def b(ctx: StepContext) -> None:
            raise RuntimeError("card declined")

        twice = RetryPolicy(max_attempts=2, initial_delay=0, jitter=0)
        sagas = [
            Workflow(f"exit-in-compensation-{kind}", retry=twice)
            .step("a", a, compensate=undo).step("b", b, retry=NO_RETRY)
            for kind, undo in (("sync", undo_sync), ("async", undo_async))
        ]
        eng = self.engine(backend, *sagas, lease=1.0)
        escaped: list[BaseException] = []
        with _contained(escaped):
            async with self.running(eng):
                submitted = [await eng.submit(wf) for wf in sagas]
                ended = [await self.settled(eng, tid) for tid in submitted]
        assert not escaped, (
            f"{type(escaped[0]).__name__} raised by a compensation escaped the engine's task (it "
            "would end the worker); the task must fail with 'compensation-failed' after one call"
        )
        for wf, task in zip(sagas, ended, strict=True):
            seen = (task.status.value, task.dead_letter, _type_name(task.error), calls[wf.name])
            assert seen == ("failed", "compensation-failed", "SystemExit", 1), (
                f"{wf.name}: (status, dead letter, error type, compensation calls) = {seen}; a "
                "compensation raising SystemExit must fail the task with 'compensation-failed' "
                "after one call, not be retried"
            )

    @pytest.mark.asyncio
    async def test_submit_refuses_a_bad_idempotency_key_or_delay_and_stores_nothing(
        self, backend: Any
    ) -> None:
        async def step(ctx: StepContext) -> None:
            return None

        wf = Workflow("bad-input").step("step", step)
        eng = self.engine(backend, wf)
        bad_keys: tuple[Any, ...] = ("", 5, {})
        for key in bad_keys:
            await _refused(eng.submit(wf, idempotency_key=key), "idempotency_key", key)
        for delay in (math.inf, math.nan):
            await _refused(eng.submit(wf, delay=delay), "delay", delay)
        assert (await backend.list()).tasks == [], "a refused submit stored a task"
        assert await backend.claim(wf.name, lease=5.0, wait=0) is None, "a refused submit queued a task"

    @pytest.mark.asyncio
    async def test_salvador_error_raised_by_a_step_follows_its_retry_policy(self, backend: Any) -> None:
        attempts: list[int] = []

        async def flaky(ctx: StepContext) -> str:
            attempts.append(ctx.attempt)
            if ctx.attempt < 3:
                raise BackendUnavailableError("the payment service's database is down")
            return "paid"

        policy = RetryPolicy(max_attempts=3, initial_delay=0, jitter=0)
        wf = Workflow("user-salvador-error").step("flaky", flaky, retry=policy)
        eng = self.engine(backend, wf)
        async with self.running(eng):
            task = await self.settled(eng, await eng.submit(wf))
        assert (task.status, attempts) == (TaskStatus.COMPLETED, [1, 2, 3]), (
            f"a step raising BackendUnavailableError (a SalvadorError of the user's own) with "
            f"max_attempts=3 ran attempts {attempts} and ended {task.status.value} "
            f"({task.dead_letter}); it must be retried like any other exception"
        )

    # -- several instances on one storage (capability `shared`) --------------------------

    @pytest.mark.asyncio
    async def test_two_engines_on_two_instances_of_one_storage_run_every_task_once(
        self, backend: Any
    ) -> None:
        self.require("shared")
        runs: Counter[str] = Counter()

        async def step(ctx: StepContext) -> None:
            runs[ctx.task.id] += 1

        wf = Workflow("two-processes").step("step", step)
        async with self.second_instance(backend) as other:
            first, second = self.engine(backend, wf), self.engine(other, wf)
            async with self.running(first), self.running(second):
                submitted = await asyncio.gather(
                    *(engine.submit(wf, {"n": n}) for n in range(15) for engine in (first, second))
                )
                ended = [await self.settled(first, tid) for tid in submitted]
        assert len(set(submitted)) == 30
        assert all(t.status is TaskStatus.COMPLETED for t in ended)
        twice = sorted(t for t, n in runs.items() if n > 1)
        assert not twice, f"{len(twice)} task(s) ran more than once with two engines on one storage"

    @pytest.mark.asyncio
    async def test_counts_agree_with_what_is_stored_when_the_backend_offers_them(self, backend: Any) -> None:
        counter: TaskCounts | None = backend if isinstance(backend, TaskCounts) else None
        if counter is None:
            pytest.skip("backend has no optional TaskCounts.stats(); salvador stats reads the listing")
        a = Workflow("counted-a").step("s", _nothing)
        b = Workflow("counted-b").step("s", _nothing)
        eng = self.engine(backend, a, b)
        for _ in range(3):
            await eng.submit(a)
        await eng.submit(a, delay=3600)
        done = await eng.get_task(await eng.submit(a))
        broken = await eng.get_task(await eng.submit(a))
        assert done is not None
        assert broken is not None
        await backend.update(done.evolve(status=TaskStatus.COMPLETED), done.version)
        failed = broken.evolve(status=TaskStatus.FAILED, dead_letter="step-failed")
        await backend.update(failed, broken.version)
        await eng.submit(b)
        found = {s.workflow: s for s in await counter.stats()}
        assert set(found) == {"counted-a", "counted-b"}
        first = found["counted-a"]
        assert first.counts == {"pending": 4, "completed": 1, "failed": 1}, first
        assert (first.queued, first.delayed, first.dead_letters) == (3, 1, 1), first
        assert first.oldest_wait_seconds is not None
        assert 0 <= first.oldest_wait_seconds < 60, first
        second = found["counted-b"]
        assert (second.counts, second.queued, second.delayed) == ({"pending": 1}, 1, 0), second

    @pytest.mark.asyncio
    async def test_counts_agree_with_the_listing_through_runs_cancels_requeues_and_purges(
        self, backend: Any
    ) -> None:
        counter: TaskCounts | None = backend if isinstance(backend, TaskCounts) else None
        if counter is None:
            pytest.skip("backend has no optional TaskCounts.stats(); salvador stats reads the listing")

        async def broken(ctx: StepContext) -> None:
            raise RuntimeError("the card was declined")

        ok = Workflow("tally-ok").step("s", _nothing)
        bad = Workflow("tally-bad").step("s", broken, retry=NO_RETRY)
        idle = Workflow("tally-idle").step("s", _nothing)  # no worker runs it
        producer = self.engine(backend, ok, bad, idle)
        runner = self.engine(backend, ok, bad)
        done = [await producer.submit(ok) for _ in range(4)]
        failed = [await producer.submit(bad) for _ in range(3)]
        waiting = [await producer.submit(idle) for _ in range(3)]
        later = [await producer.submit(idle, delay=3600) for _ in range(2)]
        await _counts_agree(counter, backend, "after submits")

        async with self.running(runner):
            for task_id in done + failed:
                await self.settled(runner, task_id)
        found = await _counts_agree(counter, backend, "after runs that completed and failed")
        assert sum(found["tally-ok"].completions[-2:]) == len(done), (
            f"{len(done)} tasks completed just now, yet the last two minutes of completions "
            f"read {found['tally-ok'].completions[-2:]}: a task completed now must show in the "
            "current minute (or the one before, if the minute turned meanwhile)"
        )
        assert sum(found["tally-ok"].completions) == len(done), found["tally-ok"]
        assert not any(found["tally-bad"].completions), (
            f"failed tasks counted as completions: {found['tally-bad'].completions}"
        )

        for task_id in (*waiting[:2], later[0]):
            await producer.cancel(task_id)  # cancelled while still queued
        found = await _counts_agree(counter, backend, "after cancelling queued tasks")
        assert (found["tally-idle"].queued, found["tally-idle"].delayed) == (1, 1), found["tally-idle"]

        leased = []
        for claim in await self.drain(backend, idle.name):
            if claim.task_id in waiting[:2]:
                await backend.ack(claim)  # as a worker does with a task cancelled while queued
            else:
                leased.append(claim)
        assert [c.task_id for c in leased] == waiting[2:], "the one due pending task was not claimed"
        stats = {s.workflow: s for s in await counter.stats()}["tally-idle"]
        assert (stats.queued, stats.oldest_wait_seconds) == (0, None), (
            f"a leased task counted as waiting: {stats} (a claimed task is no longer queued)"
        )
        await backend.release(leased[0])

        for task_id in (*failed, waiting[0]):
            await producer.requeue(task_id)
        found = await _counts_agree(counter, backend, "after requeues")
        assert found["tally-bad"].queued == len(failed), found["tally-bad"]

        finished = [TaskStatus.COMPLETED, TaskStatus.CANCELLED]
        purged = await producer.purge(utcnow() + timedelta(hours=1), finished)
        assert purged == len(done) + 2, purged
        found = await _counts_agree(counter, backend, "after purging completed and cancelled tasks")
        assert "tally-ok" not in found, "a workflow whose tasks were all purged is still counted"


async def _counts_agree(counter: TaskCounts, backend: Any, when: str) -> dict[str, WorkflowStats]:
    """`counter.stats()` against what the listing shows (nothing may be leased meanwhile);
    returns the figures by workflow."""
    now = utcnow()
    expected: dict[str, WorkflowStats] = {}
    cursor: str | None = None
    while True:
        page = await backend.list(limit=500, cursor=cursor)
        for task in page.tasks:
            stats = expected.setdefault(task.workflow, WorkflowStats(task.workflow))
            stats.counts[task.status.value] = stats.counts.get(task.status.value, 0) + 1
            if task.status in DEAD_LETTER_STATUSES:
                stats.dead_letters += 1
            if task.status is TaskStatus.PENDING:
                if task.not_before is not None and task.not_before > now:
                    stats.delayed += 1
                else:
                    stats.queued += 1
        cursor = page.cursor
        if cursor is None:
            break
    found = {s.workflow: s for s in await counter.stats()}
    assert sorted(found) == sorted(expected), (
        f"{when}: stats() names workflows {sorted(found)}, the listing {sorted(expected)}"
    )
    for name, want in expected.items():
        got = found[name]
        seen = (got.counts, got.queued, got.delayed, got.dead_letters)
        assert seen == (want.counts, want.queued, want.delayed, want.dead_letters), (
            f"{when}: stats() for {name!r} reads counts {got.counts}, queued {got.queued}, delayed "
            f"{got.delayed}, dead letters {got.dead_letters}; the listing shows {want.counts}, "
            f"{want.queued}, {want.delayed}, {want.dead_letters}"
        )
        assert (got.oldest_wait_seconds is None) == (got.queued == 0), (
            f"{when}: {name!r} has {got.queued} task(s) waiting but oldest wait {got.oldest_wait_seconds}"
        )
        assert got.oldest_wait_seconds is None or 0 <= got.oldest_wait_seconds < 60, got
        assert len(got.completions) == COMPLETION_MINUTES, (
            f"{when}: {name!r} has {len(got.completions)} minutes of completions, not {COMPLETION_MINUTES}"
        )
    return found


async def _nothing(ctx: StepContext) -> None:
    return None
