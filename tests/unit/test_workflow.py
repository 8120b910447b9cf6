"""Building workflows: names, steps, per-step settings and the mistakes users make."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from salvador_core.retry import NO_RETRY, RetryPolicy
from salvador_core.workflow import StepContext, Workflow


def a(ctx: StepContext) -> None:
    return None


async def b(ctx: StepContext) -> None:
    return None


def test_chained_and_decorated_steps_keep_their_order() -> None:
    wf = Workflow("order").step("a", a)

    @wf.step()
    async def second(ctx: StepContext) -> None:
        return None

    @wf.step("third", retry=NO_RETRY, timeout=2.0)
    def whatever(ctx: StepContext) -> None:
        return None

    assert [s.name for s in wf.steps] == ["a", "second", "third"]
    assert wf.steps[1].fn is second
    assert wf.retry_for(wf.steps[2]) is NO_RETRY
    assert wf.timeout_for(wf.steps[2]) == 2.0


def test_workflow_defaults_apply_to_steps_without_their_own() -> None:
    policy = RetryPolicy(max_attempts=7)
    wf = Workflow("defaults", retry=policy, timeout=5.0).step("a", a).step("b", b, timeout=1.0)
    assert wf.retry_for(wf.steps[0]) is policy
    assert wf.timeout_for(wf.steps[0]) == 5.0
    assert wf.timeout_for(wf.steps[1]) == 1.0


@pytest.mark.parametrize("name", ["", "   ", None, 5])
def test_a_workflow_needs_a_name(name: object) -> None:
    with pytest.raises(ValueError, match="non-empty name"):
        Workflow(name)  # type: ignore[arg-type]


def test_long_names_are_refused_with_the_limit() -> None:
    with pytest.raises(ValueError, match="over 200 bytes"):
        Workflow("x" * 201)


def test_duplicate_step_names_and_non_callables_are_refused() -> None:
    wf = Workflow("dup").step("a", a)
    with pytest.raises(ValueError, match="already has a step named 'a'"):
        wf.step("a", b)
    with pytest.raises(TypeError, match="is not callable"):
        wf.step("c", "not a function")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="compensate"):
        wf.step("d", a, compensate=42)  # type: ignore[arg-type]


def test_a_step_knows_once_whether_its_functions_are_async() -> None:
    async def charge(ctx: Any) -> None: ...

    def refund(ctx: Any) -> None: ...

    class AsyncCallable:
        async def __call__(self, ctx: Any) -> None: ...

    wf = Workflow("kinds").step("a", charge, compensate=refund).step("b", refund).step("c", AsyncCallable())
    a, b, c = wf.steps
    assert (a.fn_is_async, a.compensate_is_async) == (True, False)
    assert (b.fn_is_async, b.compensate_is_async) == (False, False)
    assert c.fn_is_async
    assert dataclasses.replace(b, fn=charge).fn_is_async  # recomputed for a changed step
    assert a == dataclasses.replace(a)  # not part of equality or the constructor
