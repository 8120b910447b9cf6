"""Worker metrics on a Prometheus endpoint: `python examples/metrics_prometheus.py [PORT]`.

Runs a worker for a small workflow on a SQLite file, with salvador's `MetricsObserver`
exporting through OpenTelemetry's Prometheus reader; Prometheus scrapes
http://127.0.0.1:PORT/metrics (`salvador_tasks_settled_total`, `salvador_step_duration_*`,
`salvador_leases_expired_total`, ...). It submits a few tasks itself so there is something
to see, and runs until Ctrl-C. Needs `pip install 'salvador-workflows[otel]'
opentelemetry-sdk opentelemetry-exporter-prometheus`.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

from salvador_core import Engine, LoggingObserver, RetryPolicy, StepContext, Workflow
from salvador_core.otel import MetricsObserver

orders = Workflow("process-order", retry=RetryPolicy(max_attempts=3, initial_delay=0.1))


@orders.step()
async def validate(ctx: StepContext) -> dict[str, object]:
    return {"order": ctx.json()["order"]}


@orders.step()
def charge(ctx: StepContext) -> str:
    if ctx.json()["order"] % 3 == 0 and ctx.attempt == 1:
        raise ConnectionError("payment provider timed out")  # retried: shows in the metrics
    return f"ch_{ctx.task.id[:8]}"


async def main(port: int) -> None:
    start_http_server(port, addr="127.0.0.1")
    meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine.from_url(
            f"sqlite:///{Path(tmp) / 'orders.db'}",
            workflows=[orders],
            observers=[LoggingObserver(), MetricsObserver(meter_provider)],
        )
        async with engine:
            for n in range(12):
                await engine.submit(orders, {"order": n})
            print(f"metrics on http://127.0.0.1:{port}/metrics; Ctrl-C to stop", flush=True)
            await engine.run()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9464))
