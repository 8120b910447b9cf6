"""memory:// details the conformance suite does not pin: purge frees keys, skips only what
cannot be read, and costs one pass over the records."""

from __future__ import annotations

from datetime import timedelta

import pytest

from salvador_core.backends import memory as memory_module
from salvador_core.backends.memory import MemoryBackend
from salvador_core.task import Task, TaskStatus, new_task_id, utcnow
from salvador_core.testing.hooks import MemoryHooks

pytestmark = pytest.mark.asyncio


async def test_purge_frees_idempotency_keys_and_keeps_the_others() -> None:
    async with MemoryBackend() as backend:
        done = [
            await backend.create(Task(id=new_task_id(), workflow="wf", idempotency_key=f"k{i}",
                                      status=TaskStatus.COMPLETED))
            for i in range(5000)
        ]
        live = await backend.create(Task(id=new_task_id(), workflow="wf", idempotency_key="live"))
        soon = utcnow() + timedelta(seconds=1)
        purged = await backend.purge(older_than=soon, statuses=[TaskStatus.COMPLETED])
        assert purged == 5000
        assert await backend.get(done[0].id) is None
        again = await backend.create(Task(id=new_task_id(), workflow="wf", idempotency_key="k0"))
        assert again.id != done[0].id, "the purged task's key still pointed at it"
        same = await backend.create(Task(id=new_task_id(), workflow="wf", idempotency_key="live"))
        assert same.id == live.id


async def test_unreadable_records_are_skipped_by_list_and_kept_by_purge() -> None:
    async with MemoryBackend() as backend:
        good = await backend.create(Task(id=new_task_id(), workflow="wf", status=TaskStatus.FAILED))
        bad = await backend.create(Task(id=new_task_id(), workflow="wf", status=TaskStatus.FAILED))
        await MemoryHooks().corrupt_record(backend, bad.id, b"\xff not json")
        page = await backend.list()
        assert [t.id for t in page.tasks] == [good.id]
        soon = utcnow() + timedelta(seconds=1)
        assert await backend.purge(older_than=soon, statuses=[TaskStatus.FAILED]) == 1
        assert backend._records[bad.id] == b"\xff not json"


async def test_list_pages_through_ids_in_order_whatever_order_they_came_in() -> None:
    async with MemoryBackend() as backend:
        made = sorted(new_task_id() for _ in range(30))
        for task_id in [*made[::-1], "0-caller-chosen", "f-caller-chosen"]:
            await backend.create(Task(id=task_id, workflow="wf"))
        for task_id in made[5:25]:  # more than half: the index compacts on the way
            assert await backend.delete(task_id)
        seen, cursor = [], None
        while True:
            page = await backend.list(limit=4, cursor=cursor)
            seen += [t.id for t in page.tasks]
            if page.cursor is None:
                break
            cursor = page.cursor
        assert seen == sorted(["0-caller-chosen", "f-caller-chosen", *made[:5], *made[25:]])
        # A cursor naming a deleted task still finds the tasks after it.
        page = await backend.list(limit=100, cursor=made[10])
        assert [t.id for t in page.tasks] == sorted([*made[25:], "f-caller-chosen"])


async def test_a_page_is_read_without_sorting_every_id(monkeypatch: pytest.MonkeyPatch) -> None:
    async with MemoryBackend() as backend:
        for _ in range(50):
            await backend.create(Task(id=new_task_id(), workflow="wf"))
        await backend.list(limit=1)  # whatever order the index is built in, it is built now
        more = [await backend.create(Task(id=new_task_id(), workflow="wf")) for _ in range(50)]
        await backend.delete(more[0].id)

        def no_sorting(*args: object, **kwargs: object) -> None:
            raise AssertionError("list() sorted every id")

        monkeypatch.setattr(memory_module, "sorted", no_sorting, raising=False)
        cursor = sorted(t.id for t in more)[20]
        page = await backend.list(limit=10, cursor=cursor)
        assert [t.id for t in page.tasks] == [i for i in sorted(backend._records) if i > cursor][:10]


async def test_records_replaced_behind_the_backend_are_listed_as_they_are_now() -> None:
    """A subclass that loads its records from elsewhere (as the suite's file-backed variants
    do) replaces the dict; the listing follows."""
    async with MemoryBackend() as backend:
        first = await backend.create(Task(id=new_task_id(), workflow="wf"))
        assert [t.id for t in (await backend.list()).tasks] == [first.id]
        other = MemoryBackend()
        await other.open()
        second = await other.create(Task(id=new_task_id(), workflow="wf"))
        backend._records = dict(other._records)
        assert [t.id for t in (await backend.list()).tasks] == [second.id]
