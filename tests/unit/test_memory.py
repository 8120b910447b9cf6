"""memory:// details the conformance suite does not pin: purge frees keys, skips only what
cannot be read, and costs one pass over the records."""

from __future__ import annotations

from datetime import timedelta

import pytest

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
