"""What observers cost: the same drain with no observer, the default logging observer, and
tracing + metrics on (OpenTelemetry SDK, spans to a no-op exporter), side by side.

    python bench/observers.py [--backend memory|sqlite] [--tasks 3000] [--rounds 3]

Rounds alternate the configurations, so a machine that gets slower or faster during the
run affects each alike; the table gives each configuration's best and median round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _shared import noop_workflow

from salvador_core import Engine, Observer


def observers(kind: str) -> list[Observer] | None:
    if kind == "none":
        return []
    if kind == "logging (default)":
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from salvador_core import LoggingObserver
    from salvador_core.otel import MetricsObserver, TracingObserver

    class Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(Discard()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return [LoggingObserver(), TracingObserver(tracer_provider), MetricsObserver(meter_provider)]


async def drain(url: str, kind: str, tasks: int) -> float:
    """Submit `tasks` 3-step no-op tasks, then time one worker (concurrency 100) draining them."""
    wf, done = noop_workflow("bench", 3, tasks)
    engine = Engine.from_url(url, workflows=[wf], concurrency=100, observers=observers(kind))
    async with engine:
        for _ in range(tasks):
            await engine.submit(wf)
        started = time.perf_counter()
        worker = asyncio.create_task(engine.run(handle_signals=False))
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - started
        engine.stop()
        await worker
    return tasks / elapsed


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    kinds = ["none", "logging (default)", "logging + tracing + metrics"]
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for kind in kinds:
                url = (
                    "memory://"
                    if args.backend == "memory"
                    else f"sqlite:///{Path(tmp) / f'{round_}-{len(rates[kind])}.db'}"
                )
                rates[kind].append(await drain(url, kind, args.tasks))
                print(f"round {round_ + 1} {kind}: {rates[kind][-1]:,.0f} tasks/s", file=sys.stderr)
    base = max(rates["none"])
    title = f"observers ({args.backend}, 3-step no-op, concurrency 100, {args.tasks} tasks)"
    print(f"| {title} | best tasks/s | median | vs none |")
    print("|---|---:|---:|---:|")
    for kind in kinds:
        best: Any = max(rates[kind])
        print(f"| {kind} | {best:,.0f} | {statistics.median(rates[kind]):,.0f} | {best / base:.0%} |")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
