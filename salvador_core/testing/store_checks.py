"""Conformance checks for `TaskStore`: records, compare-and-set, idempotency, listing."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from salvador_core.errors import ConflictError, CorruptRecordError
from salvador_core.protocols import Backend
from salvador_core.task import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    RecordVersionError,
    Task,
    TaskError,
    TaskStatus,
    encode_task,
    quarantine_task,
    utcnow,
)
from salvador_core.testing.base import ATOMIC_METHODS, AWKWARD_NAMES, ConformanceBase, _listed, checks

asyncio_check = pytest.mark.asyncio


def _full_task(check: ConformanceBase) -> Task:
    """A task with every field set to something non-default, awkward bytes included."""
    now = utcnow()
    error = TaskError(type="builtins.ValueError", message="bad ✗", step="two", attempt=2, traceback="tb")
    return check.make_task(
        "full workflow ✓",
        body=bytes(range(256)),
        status=TaskStatus.RUNNING,
        step=1,
        attempt=2,
        results={"one": {"nested": [1, 2.5, None, True, "ü"]}},
        error=error,
        failures=(error,),
        meta={"traceparent": "00-abc-def-01", "ключ": "значение"},
        idempotency_key="order-42",
        not_before=now + timedelta(seconds=30),
        owner="host:1:abc/def",
        cancel_requested=True,
        dead_letter="step-failed",
        compensated=("two",),
    )


def _same_content(a: Task, b: Task) -> None:
    """Every field but the store-managed `version` and `updated_at` is equal."""
    for name in (
        "id", "workflow", "body", "status", "step", "attempt", "results", "meta",
        "idempotency_key", "owner", "cancel_requested", "dead_letter", "compensated",
    ):
        assert getattr(a, name) == getattr(b, name), f"field {name!r} changed in the store"
    assert (a.error is None) == (b.error is None)
    if a.error is not None and b.error is not None:
        assert (a.error.type, a.error.message, a.error.step, a.error.attempt) == (
            b.error.type, b.error.message, b.error.step, b.error.attempt,
        )
    assert len(a.failures) == len(b.failures)
    for stamp in ("created_at", "not_before"):
        x, y = getattr(a, stamp), getattr(b, stamp)
        assert (x is None) == (y is None), f"{stamp} lost"
        if x is not None:
            assert abs((x - y).total_seconds()) < 0.002, f"{stamp} drifted"


@checks
class StoreChecks(ConformanceBase):
    """Every `TaskStore` guarantee of `salvador_core.protocols`."""

    @asyncio_check
    async def test_backend_implements_both_protocols(self, backend: Any) -> None:
        self.check_protocols(backend)

    @asyncio_check
    async def test_declared_capabilities_match_the_backend(self, backend: Any) -> None:
        atomic = isinstance(backend, Backend)
        declared = "atomic" in self.capabilities
        if atomic and not declared:
            raise AssertionError(
                f"{type(backend).__name__} implements the atomic Backend protocol (submit, requeue "
                "and settle); declare the 'atomic' capability so the suite checks them"
            )
        if declared and not atomic:
            missing = [name for name in ATOMIC_METHODS if not callable(getattr(backend, name, None))]
            lacks = _listed(missing, "and") or "the TaskStore/TaskQueue methods they build on"
            raise AssertionError(
                f"{type(backend).__name__} declares the 'atomic' capability but has no {lacks}: the "
                "engine uses submit, requeue and settle only when all three are there. Add "
                f"{lacks} (docs/writing-a-backend.md), or stop declaring 'atomic'"
            )

    @asyncio_check
    async def test_create_stores_version_1_and_get_returns_every_field(self, backend: Any) -> None:
        task = _full_task(self)
        created = await backend.create(task)
        assert created.version == 1
        stored = await backend.get(task.id)
        assert stored is not None
        assert stored.version == 1
        _same_content(task, stored)
        assert stored.error is not None
        assert stored.error.traceback == "tb"

    @asyncio_check
    async def test_get_of_unknown_id_is_none(self, backend: Any) -> None:
        assert await backend.get(self.make_task().id) is None

    @asyncio_check
    async def test_create_with_repeated_idempotency_key_returns_the_first_task(self, backend: Any) -> None:
        first = await backend.create(self.make_task(body=b"first", idempotency_key="k"))
        second = await backend.create(self.make_task(body=b"second", idempotency_key="k"))
        assert second.id == first.id
        assert second.body == b"first"
        assert second.version == 1
        assert await backend.get(self.make_task().id) is None
        page = await backend.list(workflow="wf")
        assert [t.id for t in page.tasks] == [first.id]

    @asyncio_check
    async def test_idempotency_key_is_scoped_to_its_workflow(self, backend: Any) -> None:
        a = await backend.create(self.make_task("wf-a", idempotency_key="same"))
        b = await backend.create(self.make_task("wf-b", idempotency_key="same"))
        assert a.id != b.id
        assert (await backend.get(b.id)) is not None

    @asyncio_check
    async def test_concurrent_creates_with_one_idempotency_key_store_one_task(self, backend: Any) -> None:
        tasks = [self.make_task(body=str(i).encode(), idempotency_key="race") for i in range(30)]
        stored = await asyncio.gather(*(backend.create(t) for t in tasks))
        assert len({s.id for s in stored}) == 1
        winner = stored[0]
        assert winner.id in {t.id for t in tasks}
        page = await backend.list(workflow="wf", limit=100)
        assert [t.id for t in page.tasks] == [winner.id]

    @asyncio_check
    async def test_idempotency_key_can_be_reused_after_delete(self, backend: Any) -> None:
        first = await backend.create(self.make_task(idempotency_key="again"))
        assert await backend.delete(first.id) is True
        second = await backend.create(self.make_task(idempotency_key="again"))
        assert second.id != first.id

    @asyncio_check
    async def test_update_bumps_version_and_updated_at(self, backend: Any) -> None:
        created = await backend.create(self.make_task())
        await asyncio.sleep(0.01)
        changed = await backend.update(created.evolve(step=1, results={"a": 1}), 1)
        assert changed.version == 2
        assert changed.updated_at > created.updated_at
        stored = await backend.get(created.id)
        assert stored is not None
        assert (stored.version, stored.step, stored.results) == (2, 1, {"a": 1})

    @asyncio_check
    async def test_update_with_stale_version_raises_conflict_and_writes_nothing(self, backend: Any) -> None:
        created = await backend.create(self.make_task())
        await backend.update(created.evolve(step=1), 1)
        with pytest.raises(ConflictError) as info:
            await backend.update(created.evolve(step=2, results={"zombie": True}), 1)
        assert info.value.expected_version == 1
        assert info.value.actual_version == 2
        stored = await backend.get(created.id)
        assert stored is not None
        assert (stored.version, stored.step, stored.results) == (2, 1, {})

    @asyncio_check
    async def test_update_of_missing_task_raises_conflict(self, backend: Any) -> None:
        with pytest.raises(ConflictError) as info:
            await backend.update(self.make_task(), 1)
        assert info.value.actual_version is None

    @asyncio_check
    async def test_concurrent_updates_of_one_version_exactly_one_wins(self, backend: Any) -> None:
        created = await backend.create(self.make_task())
        outcomes = await asyncio.gather(
            *(backend.update(created.evolve(step=i), 1) for i in range(1, 21)), return_exceptions=True
        )
        winners = [o for o in outcomes if isinstance(o, Task)]
        assert len(winners) == 1
        assert all(isinstance(o, ConflictError) for o in outcomes if not isinstance(o, Task))
        stored = await backend.get(created.id)
        assert stored is not None
        assert (stored.version, stored.step) == (2, winners[0].step)

    @asyncio_check
    async def test_list_pages_in_ascending_id_order_without_gaps_or_repeats(self, backend: Any) -> None:
        created = [await backend.create(self.make_task()) for _ in range(23)]
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = await backend.list(workflow="wf", limit=5, cursor=cursor)
            assert len(page.tasks) <= 5
            seen += [t.id for t in page.tasks]
            pages += 1
            if page.cursor is None:
                break
            cursor = page.cursor
            assert pages < 10, "listing does not terminate"
        assert seen == sorted(t.id for t in created)
        assert pages == 5

    @asyncio_check
    async def test_list_filters_by_workflow_and_status(self, backend: Any) -> None:
        a1 = await backend.create(self.make_task("wf-a"))
        a2 = await backend.create(self.make_task("wf-a"))
        b1 = await backend.create(self.make_task("wf-b"))
        await backend.update(a2.evolve(status=TaskStatus.COMPLETED), 1)
        await backend.update(b1.evolve(status=TaskStatus.FAILED), 1)

        async def listed(**filters: Any) -> set[str]:
            return {t.id for t in (await backend.list(**filters)).tasks}

        assert await listed(workflow="wf-a") == {a1.id, a2.id}
        assert await listed(workflow="wf-b") == {b1.id}
        assert await listed(status=TaskStatus.COMPLETED) == {a2.id}
        assert await listed(status=[TaskStatus.COMPLETED, TaskStatus.FAILED]) == {a2.id, b1.id}
        assert await listed(workflow="wf-a", status=TaskStatus.PENDING) == {a1.id}
        assert await listed(workflow="wf-c") == set()

    @asyncio_check
    async def test_corrupt_record_raises_with_raw_bytes_and_is_skipped_by_list(self, backend: Any) -> None:
        good = await backend.create(self.make_task())
        bad = await backend.create(self.make_task())
        await self.corrupt_record(backend, bad.id, b"\x00\xffnot json{")
        with pytest.raises(CorruptRecordError) as info:
            await backend.get(bad.id)
        assert info.value.task_id == bad.id
        assert info.value.raw == b"\x00\xffnot json{"
        assert [t.id for t in (await backend.list(workflow="wf")).tasks] == [good.id]

    @asyncio_check
    async def test_record_from_a_newer_format_is_refused_clearly(self, backend: Any) -> None:
        task = await backend.create(self.make_task())
        record = json.loads(encode_task(task))
        record["format"] = 99
        await self.corrupt_record(backend, task.id, json.dumps(record).encode())
        with pytest.raises(RecordVersionError, match="upgrade salvador"):
            await backend.get(task.id)

    @asyncio_check
    async def test_quarantine_replaces_an_unreadable_record(self, backend: Any) -> None:
        task = await backend.create(self.make_task())
        await self.corrupt_record(backend, task.id, b"garbage")
        stand_in = quarantine_task(task.id, task.workflow, b"garbage", "not valid JSON")
        stored = await backend.quarantine(stand_in)
        again = await backend.get(task.id)
        assert again is not None
        assert again.status is TaskStatus.FAILED
        assert (again.dead_letter, again.body) == ("corrupt-record", b"garbage")
        assert again.version == stored.version
        listed = await backend.list(status=TaskStatus.FAILED)
        assert task.id in {t.id for t in listed.tasks}

    @asyncio_check
    async def test_delete_removes_the_record_and_reports_whether_it_existed(self, backend: Any) -> None:
        task = await backend.create(self.make_task())
        assert await backend.delete(task.id) is True
        assert await backend.get(task.id) is None
        assert await backend.delete(task.id) is False

    @asyncio_check
    async def test_purge_deletes_only_old_terminal_tasks_in_the_given_statuses(self, backend: Any) -> None:
        done = await backend.create(self.make_task())
        failed = await backend.create(self.make_task())
        running = await backend.create(self.make_task())
        await backend.update(done.evolve(status=TaskStatus.COMPLETED), 1)
        await backend.update(failed.evolve(status=TaskStatus.FAILED), 1)
        await backend.update(running.evolve(status=TaskStatus.RUNNING), 1)
        await asyncio.sleep(0.02)
        cutoff = utcnow()
        await asyncio.sleep(0.02)
        fresh = await backend.create(self.make_task())
        await backend.update(fresh.evolve(status=TaskStatus.COMPLETED), 1)

        assert await backend.purge(older_than=cutoff, statuses=[TaskStatus.COMPLETED]) == 1
        assert await backend.get(done.id) is None
        assert await backend.get(failed.id) is not None, "a status not asked for was purged"
        assert await backend.get(fresh.id) is not None, "a task newer than the cutoff was purged"
        far_future = utcnow() + timedelta(days=1)
        assert await backend.purge(older_than=far_future, statuses=[TaskStatus.FAILED]) == 1
        assert await backend.get(running.id) is not None

    @asyncio_check
    async def test_purge_refuses_non_terminal_statuses(self, backend: Any) -> None:
        with pytest.raises(ValueError, match="not terminal"):
            await backend.purge(older_than=utcnow(), statuses=[TaskStatus.RUNNING])

    @asyncio_check
    async def test_body_and_results_at_the_default_size_limit_round_trip(self, backend: Any) -> None:
        own_limit = getattr(backend, "max_payload_bytes", None) or DEFAULT_MAX_PAYLOAD_BYTES
        limit = min(DEFAULT_MAX_PAYLOAD_BYTES, own_limit)
        body = bytes(i % 251 for i in range(limit))
        result = "x" * (limit - 2)  # a JSON string of exactly `limit` bytes
        task = await backend.create(self.make_task(body=body))
        await backend.update(task.evolve(results={"big": result}, step=1), 1)
        stored = await backend.get(task.id)
        assert stored is not None
        assert stored.body == body
        assert stored.results["big"] == result

    @asyncio_check
    async def test_awkward_workflow_names_round_trip_and_stay_apart(self, backend: Any) -> None:
        by_name = {
            name: await backend.create(self.make_task(name, body=name.encode())) for name in AWKWARD_NAMES
        }
        for name, task in by_name.items():
            stored = await backend.get(task.id)
            assert stored is not None
            assert stored.workflow == name
            assert stored.body == name.encode()
            listed = await backend.list(workflow=name)
            assert [t.id for t in listed.tasks] == [task.id], f"listing {name!r} leaked other workflows"

    @asyncio_check
    async def test_timestamps_are_timezone_aware_utc(self, backend: Any) -> None:
        task = await backend.create(self.make_task(not_before=datetime.now(timezone.utc)))
        stored = await backend.get(task.id)
        assert stored is not None
        for stamp in (stored.created_at, stored.updated_at, stored.not_before):
            assert stamp is not None
            assert stamp.utcoffset() == timedelta(0)

    @asyncio_check
    async def test_records_survive_closing_and_reopening(self, backend: Any) -> None:
        self.require("durable")
        task = await backend.create(_full_task(self))
        await backend.update(task.evolve(step=2), 1)
        reopened = await self.reopen(backend)
        stored = await reopened.get(task.id)
        assert stored is not None
        assert (stored.version, stored.step) == (2, 2)
        _same_content(task.evolve(step=2), stored)

    @asyncio_check
    async def test_writes_are_on_the_storage_when_they_return_without_closing_the_backend(
        self, backend: Any
    ) -> None:
        self.require("durable")
        task = await backend.create(_full_task(self))
        await backend.update(task.evolve(step=2), 1)
        # The first instance stays open and is never closed before the read: a crash gives a
        # backend no close() in which to flush what it kept in memory.
        async with self.second_instance(backend) as other:
            stored = await other.get(task.id)
        assert stored is not None, (
            "a record written through one instance is not found by a second instance opened on "
            "the same storage while the first is still open: the backend holds writes in process "
            "(until close()?), so a crash loses them. A durable backend has every write on its "
            "storage when the call returns."
        )
        assert (stored.version, stored.step) == (2, 2), (
            f"a second instance on the same storage reads version {stored.version}, step "
            f"{stored.step} instead of the last write (version 2, step 2): writes are not on the "
            "storage when they return"
        )
        _same_content(task.evolve(step=2), stored)

    # -- several instances on one storage (capability `shared`) ---------------------------

    @asyncio_check
    async def test_creates_through_two_instances_are_all_kept_and_visible_to_both(self, backend: Any) -> None:
        self.require("shared")
        async with self.second_instance(backend) as other:
            ours = [self.make_task(body=b"first") for _ in range(15)]
            theirs = [self.make_task(body=b"second") for _ in range(15)]
            await asyncio.gather(*(backend.create(t) for t in ours), *(other.create(t) for t in theirs))
            everything = {t.id for t in (*ours, *theirs)}
            for name, instance in (("first", backend), ("second", other)):
                listed = {t.id for t in (await instance.list(workflow="wf", limit=100)).tasks}
                missing = everything - listed
                assert not missing, (
                    f"{len(missing)} of {len(everything)} tasks created concurrently through two "
                    f"instances of one storage are missing when listed through the {name}: one "
                    "instance's writes overwrite or hide the other's (each must write to the "
                    "shared storage, not to a copy of it)"
                )
                for task_id in everything:
                    assert await instance.get(task_id) is not None, (
                        f"task {task_id} created through one instance cannot be read through the {name}"
                    )

    @asyncio_check
    async def test_idempotent_creates_racing_on_two_instances_have_one_winner(self, backend: Any) -> None:
        self.require("shared")
        async with self.second_instance(backend) as other:
            instances = (backend, other)
            stored = await asyncio.gather(*(
                instances[n % 2].create(self.make_task(body=str(n).encode(), idempotency_key="race"))
                for n in range(20)
            ))
            winners = {s.id for s in stored}
            assert len(winners) == 1, (
                f"20 creates with one idempotency key, raced through two instances of one storage, "
                f"stored {len(winners)} different tasks; exactly one may win"
            )
            for instance in instances:
                listed = [t.id for t in (await instance.list(workflow="wf")).tasks]
                assert listed == sorted(winners), f"listed {listed} instead of the one winner"

    @asyncio_check
    async def test_updates_of_one_version_racing_on_two_instances_have_one_winner(self, backend: Any) -> None:
        self.require("shared")
        created = await backend.create(self.make_task())
        async with self.second_instance(backend) as other:
            instances = (backend, other)
            outcomes = await asyncio.gather(
                *(instances[n % 2].update(created.evolve(step=n), 1) for n in range(1, 21)),
                return_exceptions=True,
            )
            winners = [o for o in outcomes if isinstance(o, Task)]
            assert len(winners) == 1, (
                f"20 updates of version 1, raced through two instances of one storage: {len(winners)} "
                "succeeded; the compare-and-set must let exactly one win across processes"
            )
            stored = await other.get(created.id)
        assert stored is not None
        assert (stored.version, stored.step) == (2, winners[0].step)

    @asyncio_check
    async def test_open_and_close_are_safe_to_repeat(self, backend: Any) -> None:
        await backend.open()  # already open: a no-op
        reopened = await self.reopen(backend)
        await reopened.close()
        await reopened.close()  # already closed: a no-op
        await reopened.open()
        task = await reopened.create(self.make_task())
        assert (await reopened.get(task.id)) is not None
