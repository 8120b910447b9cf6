"""The conformance suite itself: it cannot be switched off, and it catches broken backends."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from salvador_core import Claim, Task, TaskStatus
from salvador_core.backends.memory import MemoryBackend
from salvador_core.testing import BackendConformance, QueueChecks, StoreChecks


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


class Store(StoreChecks):
    capabilities = frozenset({"atomic"})


class Queue(QueueChecks):
    capabilities = frozenset({"atomic"})


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
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        await getattr(suite(), check)(backend)


@pytest.mark.asyncio
async def test_the_same_checks_pass_on_the_correct_backend() -> None:
    for suite, check in [
        (Store, "test_update_with_stale_version_raises_conflict_and_writes_nothing"),
        (Queue, "test_every_task_is_delivered_to_exactly_one_of_many_concurrent_claimers"),
        (Store, "test_list_filters_by_workflow_and_status"),
    ]:
        await getattr(suite(), check)(MemoryBackend())


def test_the_suite_has_at_least_40_checks() -> None:
    checks = [name for name in dir(BackendConformance) if name.startswith("test_")]
    assert len(checks) >= 40, checks
    assert TaskStatus.PENDING  # the suite's module imports resolve
