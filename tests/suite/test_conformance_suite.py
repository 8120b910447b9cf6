"""The conformance suite itself: it cannot be switched off, and it catches broken backends.

Each broken backend below is the memory backend with one fault a third-party backend
really had while it passed every check of an earlier suite; the suite must now fail it,
with a message that says what is wrong.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import deque
from typing import Any

import pytest

from salvador_core import Claim, Engine, LeaseLostError, StepContext, Task, Workflow
from salvador_core.backends.memory import MemoryBackend, _Lease
from salvador_core.testing import BackendConformance, EngineChecks, QueueChecks, StoreChecks
from salvador_core.testing.hooks import MemoryHooks
from tests.helpers.custom_store import TwoShortcutsOnly


def test_a_subclass_cannot_override_a_check() -> None:
    with pytest.raises(TypeError, match="cannot be replaced or disabled"):

        class Lazy(BackendConformance):
            def test_update_with_stale_version_raises_conflict_and_writes_nothing(self) -> None:
                assert True


def test_unknown_capabilities_are_refused() -> None:
    with pytest.raises(TypeError, match="unknown capabilities"):

        class Boastful(BackendConformance):
            capabilities = frozenset({"teleportation"})


class BlindWrites(MemoryBackend):
    """Ignores the version: the zombie-write bug fencing exists to prevent."""

    async def update(self, task: Task, expected_version: int) -> Task:
        current = await self.get(task.id)
        assert current is not None
        return await super().update(task, current.version)


class DoubleDelivery(MemoryBackend):
    """Hands every task out twice: the bug of a queue without leases."""

    async def claim(self, workflow: str, *, lease: float, wait: float) -> Claim | None:
        claim = await super().claim(workflow, lease=lease, wait=wait)
        if claim is not None and claim.deliveries == 1:
            self._ready.setdefault(workflow, deque()).append(claim.task_id)
        return claim


class ForgetsStatusFilter(MemoryBackend):
    async def list(self, **filters: Any) -> Any:
        filters.pop("status", None)
        return await super().list(**filters)


class ExpiredLeaseStillHeld(MemoryBackend):
    """Checks a claim's receipt but not its deadline: a lease that expired keeps working
    for extend, ack and release until another claimer takes the task."""

    def _current_lease(self, claim: Claim) -> _Lease:
        held = self._leases.get(claim.task_id)
        if held is None or held.receipt != claim.receipt:
            raise LeaseLostError(claim.task_id, "it was re-delivered or acked")
        return held


class BusyPolling(MemoryBackend):
    """Waits in `claim` by polling every millisecond."""

    async def claim(self, workflow: str, *, lease: float, wait: float) -> Claim | None:
        give_up = time.monotonic() + wait
        while (claim := await super().claim(workflow, lease=lease, wait=0)) is None:
            if time.monotonic() >= give_up:
                return None
            await asyncio.sleep(0.001)
        return claim


class NewestFirst(MemoryBackend):
    """Hands out the most recently queued ready task first (a stack, not a queue)."""

    async def claim(self, workflow: str, *, lease: float, wait: float) -> Claim | None:
        self._ready.get(workflow, deque()).rotate(1)
        return await super().claim(workflow, lease=lease, wait=wait)


#: The memory backend's state: what a file-backed variant keeps in its "file".
_STATE = ("_records", "_versions", "_idempotency", "_ready", "_delayed", "_leases", "_queued", "_deliveries")


class KeptInAFile(MemoryBackend):
    """The memory backend loaded from `storage` (a dict standing for a file) on open."""

    def __init__(self, storage: dict[str, Any]) -> None:
        super().__init__()
        self.storage = storage

    async def open(self) -> None:
        await super().open()
        for name, value in copy.deepcopy(self.storage.get("state", {})).items():
            setattr(self, name, value)

    def save(self) -> None:
        self.storage["state"] = copy.deepcopy({name: getattr(self, name) for name in _STATE})


class SavesOnClose(KeptInAFile):
    """Writes its file on `close()` only: durable across a polite close and reopen, but a
    crash loses every write since `open()`."""

    async def close(self) -> None:
        self.save()
        await super().close()


class LastWriterWins(KeptInAFile):
    """Writes its whole state to the file after every call that changes it: durable, but
    two instances on one file (two processes) overwrite each other's tasks."""


def _then_save(name: str) -> Any:
    async def method(self: KeptInAFile, *args: Any, **kwargs: Any) -> Any:
        result = await getattr(MemoryBackend, name)(self, *args, **kwargs)
        self.save()
        return result

    method.__name__ = name
    return method


for _name in (
    "create", "update", "delete", "purge", "quarantine", "enqueue", "claim", "extend", "ack",
    "release", "submit", "requeue", "settle",
):
    setattr(LastWriterWins, _name, _then_save(_name))


class Store(MemoryHooks, StoreChecks):
    capabilities = frozenset({"atomic"})


class Queue(MemoryHooks, QueueChecks):
    capabilities = frozenset({"atomic"})


class SharedStore(MemoryHooks, StoreChecks):
    """Store checks for a file-backed broken backend, with its second instance hook."""

    capabilities = frozenset({"atomic", "durable", "shared"})

    async def open_second_instance(self, backend: KeptInAFile) -> KeptInAFile:
        other = type(backend)(backend.storage)
        await other.open()
        return other


class SharedQueue(MemoryHooks, QueueChecks):
    capabilities = frozenset({"atomic", "shared"})

    async def open_second_instance(self, backend: KeptInAFile) -> KeptInAFile:
        other = type(backend)(backend.storage)
        await other.open()
        return other


class SameObject:
    """A "second instance" that is the first one: the storage is trivially shared. Lets the
    `durable` and `shared` checks run against the correct memory backend."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    async def close(self) -> None:
        return None


class SameObjectStore(MemoryHooks, StoreChecks):
    capabilities = frozenset({"atomic", "durable", "shared"})

    async def open_second_instance(self, backend: MemoryBackend) -> SameObject:
        return SameObject(backend)


class SameObjectQueue(MemoryHooks, QueueChecks):
    capabilities = frozenset({"atomic", "shared"})

    async def open_second_instance(self, backend: MemoryBackend) -> SameObject:
        return SameObject(backend)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("backend_class", "suite", "check"),
    [
        (BlindWrites, Store, "test_update_with_stale_version_raises_conflict_and_writes_nothing"),
        (BlindWrites, Store, "test_concurrent_updates_of_one_version_exactly_one_wins"),
        (DoubleDelivery, Queue, "test_every_task_is_delivered_to_exactly_one_of_many_concurrent_claimers"),
        (ForgetsStatusFilter, Store, "test_list_filters_by_workflow_and_status"),
    ],
)
async def test_the_suite_fails_a_broken_backend(backend_class: type, suite: type, check: str) -> None:
    backend = backend_class()
    await backend.open()
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        await getattr(suite(), check)(backend)


#: Faults that passed every check before: the backend, the suite, the check that must
#: now fail it, and (a regular expression) what its message must say.
NEW_GAPS = [
    pytest.param(
        ExpiredLeaseStillHeld, Queue,
        "test_lease_expired_through_the_back_door_is_void_before_anyone_claims_the_task_again",
        r"extend accepted a claim whose lease had expired before anyone claimed the task again",
        id="expired-lease-back-door",
    ),
    pytest.param(
        ExpiredLeaseStillHeld, Queue,
        "test_lease_run_out_on_the_clock_is_void_before_anyone_claims_the_task_again",
        r"extend accepted a claim whose lease of 0.4s had run out on the clock",
        id="expired-lease-clock",
    ),
    pytest.param(
        SavesOnClose, SharedStore,
        "test_writes_are_on_the_storage_when_they_return_without_closing_the_backend",
        r"not found by a second instance opened on the same storage while the first is still open",
        id="writes-only-on-close",
    ),
    pytest.param(
        BusyPolling, Queue, "test_idle_claim_wait_does_not_busy_poll",
        r"claim\(wait=1.0\) with nothing to claim used .* of a core .* the bound is 50% of that",
        id="busy-polling-claim",
    ),
    pytest.param(
        NewestFirst, Queue, "test_one_claimer_gets_due_tasks_oldest_first",
        r"one claimer got \['ready-4', .*oldest due first is \['ready-1', 'ready-2'",
        id="newest-first",
    ),
    pytest.param(
        LastWriterWins, SharedStore, "test_creates_through_two_instances_are_all_kept_and_visible_to_both",
        r"tasks created concurrently through two instances of one storage are missing when listed",
        id="two-instances-lose-creates",
    ),
    pytest.param(
        LastWriterWins, SharedQueue, "test_claims_racing_on_two_instances_never_deliver_a_task_twice",
        r"claimers on two instances of one storage got \d+ of 40 tasks more than once",
        id="two-instances-deliver-twice",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("backend_class", "suite", "check", "message"), NEW_GAPS)
async def test_the_suite_fails_a_backend_with_a_gap_it_used_to_miss_and_says_why(
    backend_class: type, suite: type, check: str, message: str
) -> None:
    backend = backend_class({}) if issubclass(backend_class, KeptInAFile) else backend_class()
    await backend.open()
    with pytest.raises(AssertionError, match=message):
        await getattr(suite(), check)(backend)


#: The suite each broken backend's check runs in on the correct memory backend.
ON_MEMORY = {Store: Store, Queue: Queue, SharedStore: SameObjectStore, SharedQueue: SameObjectQueue}


@pytest.mark.asyncio
async def test_the_same_checks_pass_on_the_correct_backend() -> None:
    for suite, check in [
        (Store, "test_update_with_stale_version_raises_conflict_and_writes_nothing"),
        (Queue, "test_every_task_is_delivered_to_exactly_one_of_many_concurrent_claimers"),
        (Store, "test_list_filters_by_workflow_and_status"),
        *((ON_MEMORY[gap.values[1]], gap.values[2]) for gap in NEW_GAPS),
    ]:
        async with MemoryBackend() as backend:
            await getattr(suite(), check)(backend)


@pytest.mark.asyncio
async def test_a_check_needing_a_second_instance_says_how_to_provide_one() -> None:
    class NoHook(StoreChecks):
        capabilities = frozenset({"durable"})

    check = NoHook().test_writes_are_on_the_storage_when_they_return_without_closing_the_backend
    async with MemoryBackend() as backend:
        with pytest.raises(pytest.fail.Exception, match=r"override `open_second_instance\(backend\)`"):
            await check(backend)


def test_the_suite_has_at_least_40_checks() -> None:
    checks = [name for name in dir(BackendConformance) if name.startswith("test_")]
    assert len(checks) >= 40, checks


# -- a timed-out wait says where the task is stuck -------------------------------------------


class ExpiredLeasesVanish(MemoryBackend):
    """Drops a lease that expired instead of making its task claimable again: the task of a
    worker that died is never run again."""

    def _reap(self, workflow: str, now: float) -> None:
        for task_id, held in list(self._leases.items()):
            if held.workflow == workflow and held.deadline <= now:
                del self._leases[task_id]
        super()._reap(workflow, now)


class QuickEngine(MemoryHooks, EngineChecks):
    """The engine checks, giving up on a task after 1 s instead of 10."""

    async def settled(
        self, engine: Engine, task_id: str, *, timeout: float = 10.0, what: str | None = None
    ) -> Task:
        return await super().settled(engine, task_id, timeout=1.0, what=what)


@pytest.mark.asyncio
async def test_a_timed_out_wait_shows_the_state_a_lease_bug_left_the_task_in() -> None:
    backend = ExpiredLeasesVanish()
    await backend.open()
    check = QuickEngine().test_task_whose_worker_died_mid_step_resumes_at_that_step_with_earlier_results
    with pytest.raises(AssertionError) as failed:
        await check(backend)
    message = str(failed.value).splitlines()[0]
    for seen in (
        "timed out after 1.0s waiting for task ",
        "record: status running, step 1/3 done ('b' next), attempt 1, version 2, owner dead-worker",
        "no run of this engine holds a claim on it",
        "engine.run() is running",
    ):
        assert seen in message, f"{seen!r} missing from: {message}"


@pytest.mark.asyncio
async def test_a_timed_out_wait_shows_the_delivery_and_lease_a_run_holds() -> None:
    suite = QuickEngine()
    release = asyncio.Event()
    wf = Workflow("stuck")

    @wf.step()
    async def hangs(ctx: StepContext) -> None:
        await release.wait()

    async with MemoryBackend() as backend:
        engine = suite.engine(backend, wf)
        task_id = await engine.submit(wf)
        async with suite.running(engine):
            with pytest.raises(AssertionError) as failed:
                await suite.settled(engine, task_id)
            release.set()
    message = str(failed.value)
    for seen in (
        f"timed out after 1.0s waiting for task {task_id} to finish",
        "record: status running, step 0/1 done ('hangs' next), attempt 1, version 2, owner ",
        " holds delivery 1, lease ends in ",
        "engine.run() is running",
    ):
        assert seen in message, f"{seen!r} missing from: {message}"


# -- a backend that declares `atomic` but lacks one of the three shortcuts -------------------




ATOMIC_CHECKS = [
    "test_submit_stores_and_queues_in_one_step",
    "test_submit_with_not_before_is_delayed",
    "test_requeue_is_fenced_and_queues_the_task",
    "test_settle_writes_and_acks_together",
    "test_settle_with_stale_version_writes_nothing_and_keeps_the_lease",
    "test_settle_after_losing_the_lease_still_writes",
]


@pytest.mark.asyncio
@pytest.mark.parametrize("check", ATOMIC_CHECKS)
async def test_a_backend_declaring_atomic_without_settle_fails_the_atomic_checks_naming_settle(
    check: str,
) -> None:
    backend = TwoShortcutsOnly()
    await backend.open()
    # Caught as BaseException: a skip (what the suite did before) must fail this test too.
    outcome: BaseException | None = None
    try:
        await getattr(Queue(), check)(backend)
    except BaseException as exc:
        outcome = exc
    assert isinstance(outcome, pytest.fail.Exception), (
        f"{check} ended with {outcome!r}; a backend declaring 'atomic' without settle must fail it"
    )
    assert "declares the 'atomic' capability but has no settle" in str(outcome)
    assert "silently take the split path" in str(outcome)


@pytest.mark.asyncio
async def test_a_backend_with_two_shortcuts_not_declaring_atomic_is_skipped_saying_which_go_unused() -> None:
    class Undeclared(MemoryHooks, QueueChecks):
        pass

    backend = TwoShortcutsOnly()
    await backend.open()
    with pytest.raises(pytest.skip.Exception, match=r"no settle; .* never calls its submit and requeue"):
        await Undeclared().test_settle_writes_and_acks_together(backend)


@pytest.mark.asyncio
async def test_the_declared_capabilities_check_names_the_missing_shortcut() -> None:
    backend = TwoShortcutsOnly()
    await backend.open()
    with pytest.raises(AssertionError, match="settle"):
        await Store().test_declared_capabilities_match_the_backend(backend)
