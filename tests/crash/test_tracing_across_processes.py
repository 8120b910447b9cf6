"""Traces and metrics across processes: a task submitted here and run by worker processes
(tests/helpers/worker_app.py with --otel) makes one trace, and the workers' metrics count
what happened, a SIGKILLed worker included."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from salvador_core import Engine, TaskStatus
from salvador_core.otel import TracingObserver
from tests.helpers.worker_app import build
from tests.helpers.workers import Workers, count_of, wait_for


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "effects.log").touch()
    return tmp_path


@pytest.fixture
def workers(workdir: Path) -> Iterator[Workers]:
    pool = Workers(f"sqlite:///{workdir / 'tasks.db'}", workdir)
    yield pool
    pool.stop_all()


def spans_of(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in workdir.glob("spans-*.jsonl") for line in f.read_text().splitlines()]


def hung_task(workdir: Path) -> str:
    """The id of the task whose step 2 is hanging (its marker file names it)."""
    return next(iter(workdir.glob("in-two-*"))).name.removeprefix("in-two-")


async def stop(workers: Workers, proc: Any) -> None:
    proc.send_signal(signal.SIGTERM)
    await wait_for(lambda: proc.poll() is not None, 15, "the worker to stop")


@pytest.mark.asyncio
async def test_a_task_run_in_another_process_joins_the_submitters_trace(
    workdir: Path, workers: Workers
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("the-service")
    url = f"sqlite:///{workdir / 'tasks.db'}"
    observers = [TracingObserver(provider)]
    async with Engine.from_url(url, workflows=build(workdir, "none"), observers=observers) as producer:
        with tracer.start_as_current_span("POST /orders") as request:
            task_id = await producer.submit("counted", {"order": 7})
        proc = workers.start("--otel")

        async def done() -> bool:
            task = await producer.get_task(task_id)
            return task is not None and task.status is TaskStatus.COMPLETED

        await wait_for(done, 30, "the task to complete")
        await stop(workers, proc)
    [submit] = [s for s in exporter.get_finished_spans() if s.name == "salvador submit counted"]
    trace_id = request.get_span_context().trace_id
    remote = spans_of(workdir)
    assert {s["trace_id"] for s in remote} == {trace_id}, "the worker's spans left the submitter's trace"
    [run] = [s for s in remote if s["name"] == "salvador run counted"]
    assert run["parent_id"] == submit.context.span_id
    steps = sorted((s for s in remote if s["name"].startswith("salvador step ")), key=lambda s: s["name"])
    assert [s["name"] for s in steps] == ["salvador step one", "salvador step three", "salvador step two"]
    assert all(s["parent_id"] == run["span_id"] for s in steps)
    assert all(s["attributes"]["salvador.task_id"] == task_id for s in steps)
    assert all(s["attributes"]["salvador.backend"] == "sqlite" for s in steps)


@pytest.mark.asyncio
async def test_metrics_of_the_surviving_worker_count_the_lost_one_and_its_recovery(
    workdir: Path, workers: Workers
) -> None:
    url = f"sqlite:///{workdir / 'tasks.db'}"
    async with Engine.from_url(url, workflows=build(workdir, "none")) as producer:
        ids = [await producer.submit("counted", {"n": n}) for n in range(10)]
        doomed = workers.start("--block", "step2-hang", "--lease", "1.0", "--otel")
        await wait_for(lambda: any(workdir.glob("in-two-*")), 30, "a step to hang")
        hung = hung_task(workdir)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        survivor = workers.start("--lease", "1.0", "--otel")

        async def all_done() -> bool:
            tasks = [await producer.get_task(i) for i in ids]
            return all(t is not None and t.status is TaskStatus.COMPLETED for t in tasks)

        await wait_for(all_done, 60, "every task to complete")
        await stop(workers, survivor)
        await asyncio.sleep(0)
    metrics = json.loads((workdir / f"metrics-{survivor.pid}.json").read_text())

    def total(name: str) -> float:
        return sum(float(p["value"] or 0) for p in metrics.get(name, []))

    # Counted independently from the side effects the steps left.
    completed_by_survivor = count_of(workdir, "three") - sum(
        1 for line in (workdir / "effects.log").read_text().splitlines()
        if line.startswith("three ") and line.endswith(f" {doomed.pid}")
    )
    assert total("salvador.tasks.settled") == completed_by_survivor
    assert total("salvador.leases.expired") == 1, f"the SIGKILLed worker's task ({hung}) resumed once"
    [recovery] = metrics["salvador.recovery.duration"]
    assert recovery["count"] == 1
    assert 0.5 <= recovery["value"] <= 30, recovery  # at least most of the 1 s lease, in seconds
