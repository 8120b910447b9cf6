"""A worker process for fault-injection tests: `python tests/worker_app.py URL DIR [options]`.

Every step run leaves a side effect (a line appended to DIR/effects.log: "<event> <task>
<pid>"), so tests count what really ran instead of trusting the engine's own records.
Steps block at chosen points on their first attempt, giving tests a moment to SIGKILL
or SIGSTOP the process in the middle of a step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from salvador_core import NO_RETRY, Engine, LoggingObserver, Observer, RetryPolicy, StepContext, Workflow


def effect(directory: Path, event: str, task_id: str) -> None:
    """Append one line; O_APPEND writes this small are atomic across processes."""
    with open(directory / "effects.log", "a") as f:
        f.write(f"{event} {task_id} {os.getpid()}\n")


def marker(directory: Path, name: str) -> None:
    (directory / name).write_text(str(os.getpid()))


def build(directory: Path, block: str) -> list[Workflow]:
    """`block` says where the first attempt stops: 'none', 'step2-hang' (sleep for ever,
    to be killed), 'step2-brief' (sleep 0.3 s, to be paused) or 'compensate2-hang'."""

    counted = Workflow("counted", retry=RetryPolicy(max_attempts=5, initial_delay=0.05))

    @counted.step()
    def one(ctx: StepContext) -> int:
        effect(directory, "one", ctx.task.id)
        return 1

    @counted.step()
    async def two(ctx: StepContext) -> dict[str, int]:
        if ctx.attempt == 1 and block in ("step2-hang", "step2-brief"):
            marker(directory, f"in-two-{ctx.task.id}")
            await asyncio.sleep(3600 if block == "step2-hang" else 0.3)
        effect(directory, "two", ctx.task.id)
        return {"pid": os.getpid(), "one": ctx.results["one"]}

    @counted.step()
    def three(ctx: StepContext) -> str:
        effect(directory, "three", ctx.task.id)
        return "done"

    saga = Workflow("saga", retry=NO_RETRY)

    def undo(name: str, hang: bool) -> object:
        def compensate(ctx: StepContext) -> None:
            effect(directory, f"undo-{name}-start", ctx.task.id)
            if hang and not (directory / f"undo-{name}-hung").exists():
                marker(directory, f"undo-{name}-hung")
                time.sleep(3600)
            effect(directory, f"undo-{name}-done", ctx.task.id)

        compensate.__name__ = f"undo_{name}"
        return compensate

    def step(name: str, fail: bool = False) -> object:
        def run(ctx: StepContext) -> str:
            effect(directory, name, ctx.task.id)
            if fail:
                raise RuntimeError(f"{name} failed on purpose")
            return name

        run.__name__ = name
        return run

    hang2 = block == "compensate2-hang"
    saga.step("s1", step("s1"), compensate=undo("s1", False))  # type: ignore[arg-type]
    saga.step("s2", step("s2"), compensate=undo("s2", hang2))  # type: ignore[arg-type]
    saga.step("s3", step("s3", fail=True), compensate=undo("s3", False))  # type: ignore[arg-type]
    saga.step("s4", step("s4"), compensate=undo("s4", False))  # type: ignore[arg-type]
    return [counted, saga, *faulty(directory)]


def faulty(directory: Path) -> list[Workflow]:
    """Steps that misbehave the way real code does: exit the process, ignore cancellation,
    overrun their timeout. The body (JSON) says how, so one worker serves every test."""

    exits = Workflow("exits", retry=RetryPolicy(max_attempts=2, initial_delay=0.05))

    @exits.step()
    def raise_it(ctx: StepContext) -> str:
        how = ctx.json()["raise"]
        effect(directory, f"exits-{how}", ctx.task.id)
        if how == "SystemExit":
            sys.exit(3)
        if how == "KeyboardInterrupt":
            raise KeyboardInterrupt
        return "ok"

    @exits.step()
    async def raise_async(ctx: StepContext) -> str:
        how = ctx.json().get("raise_async")
        if how == "SystemExit":
            sys.exit(4)
        if how == "CancelledError":
            raise asyncio.CancelledError
        return "ok"

    stubborn = Workflow("stubborn", retry=NO_RETRY)

    @stubborn.step()
    def ignore_cancel(ctx: StepContext) -> str:
        marker(directory, f"stubborn-{ctx.task.id}")
        time.sleep(float(ctx.json()["sleep"]))  # never looks at ctx.cancelled
        effect(directory, "stubborn-done", ctx.task.id)
        return "finally"

    overrun = Workflow("overrun", retry=NO_RETRY, timeout=0.2)

    @overrun.step()
    def too_slow(ctx: StepContext) -> None:
        effect(directory, "overrun-start", ctx.task.id)
        time.sleep(30)

    quick = Workflow("quick", retry=NO_RETRY)

    @quick.step()
    def fast(ctx: StepContext) -> str:
        effect(directory, "quick", ctx.task.id)
        return "fast"

    exit_undo = Workflow("exit-undo", retry=NO_RETRY)

    def exit_in_undo(ctx: StepContext) -> None:
        effect(directory, "exit-undo", ctx.task.id)
        sys.exit(5)

    def first(ctx: StepContext) -> str:
        return "done"

    def then_fail(ctx: StepContext) -> None:
        raise RuntimeError("fails so that the first step is compensated")

    exit_undo.step("first", first, compensate=exit_in_undo)
    exit_undo.step("then_fail", then_fail)

    return [exits, stubborn, overrun, quick, exit_undo]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--block", default="none")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--drain-timeout", type=float, default=2.0)
    parser.add_argument("--otel", action="store_true", help="export spans and metrics to DIR")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    observers: list[Observer] | None = None
    dump_metrics = None
    if args.otel:
        observers, dump_metrics = otel_observers(args.directory)
    engine = Engine.from_url(
        args.url,
        workflows=build(args.directory, args.block),
        lease=args.lease,
        poll_interval=args.poll_interval,
        concurrency=args.concurrency,
        drain_timeout=args.drain_timeout,
        observers=observers,
    )
    marker(args.directory, f"started-{os.getpid()}")
    await engine.run()
    if dump_metrics is not None:
        dump_metrics()
    marker(args.directory, f"stopped-{os.getpid()}")


def otel_observers(directory: Path) -> tuple[list[Observer], Callable[[], None]]:
    """Tracing and metrics observers exporting to files in `directory`: every finished span
    as a JSON line in spans-<pid>.jsonl, the metric points in metrics-<pid>.json at exit."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from salvador_core.otel import MetricsObserver, TracingObserver

    spans = directory / f"spans-{os.getpid()}.jsonl"

    class ToFile(SpanExporter):
        def export(self, batch: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(spans, "a") as f:
                for span in batch:
                    assert span.context is not None
                    f.write(json.dumps({
                        "name": span.name,
                        "trace_id": span.context.trace_id,
                        "span_id": span.context.span_id,
                        "parent_id": span.parent.span_id if span.parent is not None else None,
                        "attributes": dict(span.attributes or {}),
                        "status": span.status.status_code.name,
                    }) + "\n")
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(ToFile()))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])

    def dump() -> None:
        found: dict[str, list[dict[str, object]]] = {}
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        found.setdefault(metric.name, []).append({
                            "attributes": dict(point.attributes or {}),
                            "value": value if value is not None else getattr(point, "sum", None),
                            "count": getattr(point, "count", None),
                        })
        (directory / f"metrics-{os.getpid()}.json").write_text(json.dumps(found))

    observers: list[Observer] = [
        LoggingObserver(),
        TracingObserver(tracer_provider, backend="sqlite"),
        MetricsObserver(meter_provider),
    ]
    return observers, dump


if __name__ == "__main__":
    asyncio.run(main())
