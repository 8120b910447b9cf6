"""Tracing and metrics observers with the OpenTelemetry SDK's in-memory exporters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from salvador_core import Engine, RetryPolicy, StepContext, Task, Workflow
from salvador_core.otel import MetricsObserver, TracingObserver

pytestmark = pytest.mark.asyncio


def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def run_until_settled(engine: Engine, ids: list[str]) -> list[Task]:
    worker = asyncio.create_task(engine.run(handle_signals=False))
    try:
        for _ in range(1000):
            tasks = [await engine.get_task(i) for i in ids]
            if all(t is not None and t.status.terminal for t in tasks):
                return [t for t in tasks if t is not None]
            await asyncio.sleep(0.01)
        raise AssertionError(f"tasks did not finish: {tasks}")
    finally:
        engine.stop()
        await worker


async def test_one_trace_from_submit_through_every_step_with_failures_recorded() -> None:
    provider, exporter = tracing()
    tracer = provider.get_tracer("the-service")
    inner: list[Any] = []

    def charge(ctx: StepContext) -> str:
        if ctx.attempt == 1:
            raise ConnectionError("card network down")
        with tracer.start_as_current_span("http POST /charges") as span:
            inner.append(span)
        return "ch_1"

    wf = Workflow("order", retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    wf.step("validate", lambda c: 1)
    wf.step("charge", charge)
    wf.step("ship", lambda c: "shipped")
    engine = Engine.from_url(
        "memory://", workflows=[wf], poll_interval=0.05,
        observers=[TracingObserver(provider, backend="memory")],
    )
    async with engine:
        with tracer.start_as_current_span("POST /orders") as request:
            task_id = await engine.submit(wf, {"order": 1})
        [task] = await run_until_settled(engine, [task_id])
    assert task.status.value == "completed"
    assert task.meta["traceparent"].startswith("00-")

    spans = exporter.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    trace_ids = {span.context.trace_id for span in spans}
    assert trace_ids == {request.get_span_context().trace_id}, "not one trace"
    [submit] = by_name["salvador submit order"]
    assert submit.kind is SpanKind.PRODUCER
    assert submit.parent.span_id == request.get_span_context().span_id
    assert submit.attributes["salvador.task_id"] == task_id
    runs = by_name["salvador run order"]
    assert len(runs) == 2, "one run span per attempt"
    assert all(run.parent.span_id == submit.context.span_id for run in runs)
    assert all(run.kind is SpanKind.CONSUMER for run in runs)
    failed_run, ok_run = sorted(runs, key=lambda s: s.start_time)
    assert failed_run.status.status_code is StatusCode.ERROR
    # A run span's attempt is the attempt it ran, not that of its last step (ship: 1).
    assert [failed_run.attributes["salvador.attempt"], ok_run.attributes["salvador.attempt"]] == [1, 2]
    charges = sorted(by_name["salvador step charge"], key=lambda s: s.start_time)
    assert [s.attributes["salvador.attempt"] for s in charges] == [1, 2]
    assert charges[0].parent.span_id == failed_run.context.span_id
    assert charges[1].parent.span_id == ok_run.context.span_id
    assert charges[0].status.status_code is StatusCode.ERROR
    assert charges[0].events[0].name == "exception"
    assert charges[0].events[0].attributes["exception.type"] == "ConnectionError"
    assert charges[1].status.status_code is StatusCode.UNSET
    assert charges[1].attributes["salvador.backend"] == "memory"
    assert charges[1].attributes["salvador.workflow"] == "order"
    # A span the step made itself is a child of the step's span.
    [http] = by_name["http POST /charges"]
    assert http.parent.span_id == charges[1].context.span_id


async def test_compensations_get_spans_of_their_own() -> None:
    provider, exporter = tracing()

    def fail(ctx: StepContext) -> None:
        raise ValueError("no stock")

    wf = Workflow("saga", retry=RetryPolicy(max_attempts=1))
    wf.step("reserve", lambda c: 1, compensate=lambda c: None)
    wf.step("ship", fail)
    engine = Engine.from_url("memory://", workflows=[wf], poll_interval=0.05,
                             observers=[TracingObserver(provider)])
    async with engine:
        [task] = await run_until_settled(engine, [await engine.submit(wf)])
    assert task.status.value == "compensated"
    names = [s.name for s in exporter.get_finished_spans()]
    assert "salvador compensate reserve" in names
    [run] = [s for s in exporter.get_finished_spans() if s.name == "salvador run saga"]
    assert run.attributes["salvador.status"] == "compensated"
    assert run.status.status_code is StatusCode.ERROR


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def total(found: dict[str, list[Any]], name: str, **attributes: Any) -> float:
    return sum(
        p.value for p in found.get(name, [])
        if all(p.attributes.get(f"salvador.{k}") == v for k, v in attributes.items())
    )


async def test_metrics_count_what_happened() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    calls = {"flaky": 0}

    def flaky(ctx: StepContext) -> None:
        calls["flaky"] += 1
        if ctx.json()["n"] % 4 == 0 and ctx.attempt == 1:
            raise TimeoutError("try again")  # 25 tasks fail once, then succeed

    def doomed(ctx: StepContext) -> None:
        if ctx.json()["n"] % 10 == 0:
            raise ValueError("bad order")  # 10 tasks fail for good

    wf = Workflow("m", retry=RetryPolicy(max_attempts=2, initial_delay=0.01)).step("flaky", flaky)
    wf.step("doomed", doomed, retry=RetryPolicy(max_attempts=1))
    engine = Engine.from_url("memory://", workflows=[wf], poll_interval=0.05, concurrency=8,
                             observers=[MetricsObserver(provider)])
    async with engine:
        ids = [await engine.submit(wf, {"n": n}) for n in range(100)]
        dup = await engine.submit(wf, {"n": 1}, idempotency_key="dup")
        assert await engine.submit(wf, {"n": 1}, idempotency_key="dup") == dup  # not counted again
        tasks = await run_until_settled(engine, [*ids, dup])
    found = points(reader)
    completed = sum(1 for t in tasks if t.status.value == "completed")
    failed = sum(1 for t in tasks if t.status.value == "failed")
    assert (completed, failed) == (91, 10)
    assert total(found, "salvador.tasks.submitted", workflow="m") == 101
    assert total(found, "salvador.tasks.settled", status="completed") == 91
    assert total(found, "salvador.tasks.settled", status="failed") == 10
    assert total(found, "salvador.tasks.retried", step="flaky") == 25
    assert total(found, "salvador.tasks.dead_lettered", dead_letter="step-failed") == 10
    durations = [p for p in found["salvador.step.duration"] if p.attributes["salvador.step"] == "flaky"]
    assert sum(p.count for p in durations) == calls["flaky"] == 126  # 101 tasks + 25 retries
    failures = [p for p in durations if p.attributes["salvador.outcome"] == "TimeoutError"]
    assert sum(p.count for p in failures) == 25


async def test_queue_depth_and_oldest_wait_are_gauges_fed_by_the_workers_upkeep() -> None:
    reader = InMemoryMetricReader()
    observer = MetricsObserver(MeterProvider(metric_readers=[reader]))
    seen: list[Any] = []

    class Spy(MetricsObserver):
        def queue_stats(self, stats: Any) -> None:
            seen.append(list(stats))
            observer.queue_stats(stats)

    release = asyncio.Event()

    async def held(ctx: StepContext) -> None:
        await release.wait()

    wf = Workflow("gauged").step("held", held)
    engine = Engine.from_url("memory://", workflows=[wf], lease=1.0, concurrency=1, observers=[Spy()])
    async with engine:
        for _ in range(4):
            await engine.submit(wf)
        worker = asyncio.create_task(engine.run(handle_signals=False))
        for _ in range(300):  # upkeep runs every lease (1 s here)
            if seen:
                break
            await asyncio.sleep(0.01)
        release.set()
        engine.stop()
        await worker
    assert seen, "the worker's upkeep never reported the queue"
    [stats] = seen[0]
    assert stats.workflow == "gauged"
    assert stats.queued == 3  # one of the four is running
    found = points(reader)
    [depth] = found["salvador.queue.depth"]
    assert (depth.value, depth.attributes["salvador.workflow"]) == (3, "gauged")
    [oldest] = found["salvador.queue.oldest_wait"]
    assert 0.9 <= oldest.value < 30
