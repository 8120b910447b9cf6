#!/usr/bin/env python3
"""Make docs/images/trace.png (and trace-attributes.png): a real salvador trace in a tracing UI.

    python3 scripts/trace-screenshot.py [--venv /tmp/salvador-trace-venv] [--out docs/images]

Not part of `make test`: it installs a tracing UI, so it is run by hand when the tracing
docs change. From scratch it:

1. creates a throwaway virtualenv (`--venv`, outside the repository; reused when it is
   already there) with Arize Phoenix (a tracing UI that is also an OTLP receiver), the
   OpenTelemetry SDK and OTLP/HTTP exporter, Playwright, and salvador from this checkout
   (`pip install -e .[otel]`);
2. starts Phoenix on free loopback ports, its database in a temporary directory;
3. starts a worker process, then a producer process that places an order: inside a
   `place order` span it submits one task of the 3-step `process-order` workflow
   (validate -> charge-payment -> ship) and waits for its result; charge-payment fails on
   its first attempt and is retried. Both processes export their spans over OTLP to
   Phoenix; the task record lives in SQLite;
4. waits until Phoenix has every span of the trace, then screenshots its trace view in
   Debian's Chromium (/usr/bin/chromium) through Playwright;
5. stops the worker and Phoenix by PID, whatever happened.

The producer, worker and screenshot roles are this same file run by the venv's Python
(`... trace-screenshot.py worker URL ENDPOINT`, etc.); the orchestrator needs only the
standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
PROJECT = "salvador"  # the Phoenix project the spans go to (resource `openinference.project.name`)
WORKFLOW = "process-order"
#: Every span of the trace: the producer's `place order` and submit, then for each of the
#: two runs its run span, its steps, and the span charge-payment makes itself.
EXPECTED_SPANS = 10
#: The browser window: 760 px high shows the 10 rows of the tree with no empty screen below.
WIDTH, HEIGHT = 1400, 760
PACKAGES = [
    "arize-phoenix",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "playwright",
]


def say(text: str) -> None:
    print(f"trace-screenshot: {text}", file=sys.stderr, flush=True)


# -- the workflow and its two processes (run inside the throwaway venv) ---------------------


def tracer_provider(endpoint: str, service: str) -> Any:
    """An SDK provider exporting over OTLP/HTTP to `endpoint`, batched as in production."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service, "openinference.project.name": PROJECT})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    return provider


def build(provider: Any) -> Any:
    """The README's process-order workflow. Each step takes a moment, as real ones do, so
    the waterfall has bars to show; charge-payment's first call to the payment gateway
    times out (so the task is retried) and every call makes a span of its own."""
    from salvador_core import RetryPolicy, StepContext, Workflow

    tracer = provider.get_tracer("orders")
    wf = Workflow(WORKFLOW)

    @wf.step("validate")
    async def validate(ctx: StepContext) -> dict[str, str]:
        order = ctx.json()
        await asyncio.sleep(0.04)
        if order["amount"] <= 0:
            raise ValueError("amount must be positive")
        return {"order_id": order["order_id"]}

    @wf.step("charge-payment", retry=RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=0.0))
    async def charge_payment(ctx: StepContext) -> dict[str, str]:
        # A child of the step's span: the step's span is current while the step runs.
        with tracer.start_as_current_span("payment-gateway POST /charges") as span:
            span.set_attribute("payment.idempotency_key", ctx.idempotency_key)
            await asyncio.sleep(0.25 if ctx.task.attempt == 1 else 0.12)
            if ctx.task.attempt == 1:
                raise ConnectionError("payment gateway timed out")
        return {"charge_id": f"ch_{ctx.idempotency_key}"}

    @wf.step("ship")
    async def ship(ctx: StepContext) -> dict[str, str]:
        await asyncio.sleep(0.08)
        return {"shipped": ctx.results["validate"]["order_id"]}

    return wf


async def producer(url: str, endpoint: str) -> None:
    """Place one order: submit it and wait for its result, all inside one `place order`
    span (the trace's root), then print the task and trace ids.

    The root spans the wait because Phoenix scales every span's timing bar to the root
    span: a root that ended at submit (an HTTP handler that answers 202 at once) would
    leave the worker's spans, which start after it, without bars in the picture.
    """
    from opentelemetry.trace import format_trace_id

    from salvador_core import Engine
    from salvador_core.otel import TracingObserver

    provider = tracer_provider(endpoint, "orders-client")
    observers = [TracingObserver(provider, backend="sqlite")]
    async with Engine.from_url(url, workflows=[build(provider)], observers=observers) as engine:
        tracer = provider.get_tracer("orders-client")
        with tracer.start_as_current_span("place order") as root:
            root.set_attribute("order.id", "A-1001")
            task_id = await engine.submit(WORKFLOW, {"order_id": "A-1001", "amount": 42.5})
            deadline = time.monotonic() + 60
            while True:
                task = await engine.get_task(task_id)
                if task is not None and task.status.terminal:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"task {task_id} did not finish within 60s: {task}")
                await asyncio.sleep(0.05)
    provider.shutdown()  # flushes the batch
    if task.status.value != "completed":
        raise RuntimeError(f"task {task_id} ended {task.status.value}: {task.error}")
    trace_id = format_trace_id(root.get_span_context().trace_id)
    print(json.dumps({"task_id": task_id, "trace_id": trace_id}), flush=True)


async def worker(url: str, endpoint: str) -> None:
    """Run process-order until SIGTERM, then flush the spans."""
    from salvador_core import Engine, LoggingObserver
    from salvador_core.otel import TracingObserver

    provider = tracer_provider(endpoint, "orders-worker")
    observers = [LoggingObserver(), TracingObserver(provider, backend="sqlite")]
    engine = Engine.from_url(url, workflows=[build(provider)], observers=observers, poll_interval=0.2)
    try:
        await engine.run()
    finally:
        provider.shutdown()


def shoot(base: str, trace_id: str, out: Path) -> None:
    """Screenshot Phoenix's trace view twice: the span tree at full width, where each row
    has its timing bar (the waterfall), and the tree beside the detail panel with the
    retried charge-payment step selected, its attributes showing."""
    from playwright.sync_api import Page, sync_playwright

    trace_url = f"{base}/projects/{project_id(base)}/traces/{trace_id}"

    def open_trace(page: Page, tree_percent: int) -> None:
        """The trace in a drawer as wide as Phoenix allows, its span tree taking
        `tree_percent` of it (a multiple of 5, the step of one arrow key press)."""
        page.goto(trace_url, wait_until="networkidle")
        page.get_by_label("Collapse side navigation").click()
        page.get_by_role("separator", name="Resize drawer").focus()
        for _ in range(20):
            page.keyboard.press("ArrowLeft")
        page.locator("[role=separator][aria-controls=trace-tree]").focus()
        page.keyboard.press("Home")  # 5%
        for _ in range(tree_percent // 5 - 1):
            page.keyboard.press("ArrowRight")

    def screenshot(page: Page, name: str) -> None:
        page.mouse.move(0, HEIGHT - 1)  # no hover highlight in the picture
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / name))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            open_trace(page, 100)  # the tree alone: wide enough for its timing bars
            screenshot(page, "trace.png")
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            open_trace(page, 35)
            # The second charge-payment step: the one of the retry (attempt 2).
            page.get_by_text("salvador step charge-payment", exact=True).nth(1).click()
            screenshot(page, "trace-attributes.png")
        finally:
            browser.close()


# -- Phoenix ---------------------------------------------------------------------------------


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def project_id(base: str) -> str:
    """Phoenix's id of the project the spans went to (its URLs use ids, not names)."""
    answer = http_json(f"{base}/graphql", {"query": "{ projects { edges { node { id name } } } }"})
    for edge in answer["data"]["projects"]["edges"]:
        if edge["node"]["name"] == PROJECT:
            return str(edge["node"]["id"])
    raise RuntimeError(f"Phoenix has no project {PROJECT!r}: no span reached it")


def span_count(base: str, trace_id: str) -> int:
    """How many spans of `trace_id` Phoenix has stored (0 while the project does not exist)."""
    try:
        answer = http_json(f"{base}/v1/projects/{PROJECT}/spans?limit=100")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return 0
        raise
    return sum(1 for span in answer["data"] if span["context"]["trace_id"] == trace_id)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting {timeout:g}s for {what}")
        time.sleep(0.5)


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except OSError:
        return False
    return True


# -- the orchestrator (standard library only) ------------------------------------------------


def ensure_venv(venv: Path) -> Path:
    """The throwaway venv's python, created and filled on first use (salvador is installed
    editable, so a reused venv runs the code of this checkout)."""
    python = venv / "bin" / "python"
    ready = venv / ".salvador-trace-ready"
    if not python.exists():
        say(f"creating the throwaway virtualenv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if not ready.exists():
        say("installing Phoenix, the OpenTelemetry SDK and exporter, Playwright and salvador")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PACKAGES, "-e", f"{REPO}[otel]"], check=True
        )
        ready.touch()
    return python


def stop(proc: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM `proc` by its PID; SIGKILL it if it is still there after 20 s."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        say(f"{name} (pid {proc.pid}) ignored SIGTERM; killing it")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def orchestrate(venv: Path, out: Path) -> None:
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"trace-screenshot: {CHROMIUM} is missing: run scripts/ensure-browser.sh first")
    python = ensure_venv(venv)
    out.mkdir(parents=True, exist_ok=True)
    me = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="salvador-trace-") as tmp:
        work = Path(tmp)
        port, grpc_port = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "PHOENIX_WORKING_DIR": str(work / "phoenix"),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(port),
            "PHOENIX_GRPC_PORT": str(grpc_port),
            "PHOENIX_TELEMETRY_ENABLED": "false",
        }
        url = f"sqlite:///{work / 'tasks.db'}"
        procs: list[tuple[subprocess.Popen[bytes], str]] = []
        try:
            with open(work / "phoenix.log", "wb") as log:
                phoenix = subprocess.Popen(
                    [str(python.parent / "phoenix"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            procs.append((phoenix, "phoenix"))
            say(f"Phoenix (pid {phoenix.pid}) starting on {base}")
            wait_until(lambda: answers(f"{base}/healthz"), 120, "Phoenix to answer")
            worker_proc = subprocess.Popen([str(python), me, "worker", url, base], cwd=work)
            procs.append((worker_proc, "worker"))
            say(f"worker pid {worker_proc.pid}; submitting from a producer process")
            produced = subprocess.run(
                [str(python), me, "producer", url, base], cwd=work, check=True, stdout=subprocess.PIPE
            )
            ids = json.loads(produced.stdout)
            say(f"task {ids['task_id']} completed; trace {ids['trace_id']}")
            stop(worker_proc, "worker")  # it flushes its last spans as it stops
            wait_until(
                lambda: span_count(base, ids["trace_id"]) >= EXPECTED_SPANS,
                60,
                f"Phoenix to hold all {EXPECTED_SPANS} spans",
            )
            subprocess.run([str(python), me, "shoot", base, ids["trace_id"], str(out)], check=True)
            say(f"wrote {out / 'trace.png'} and {out / 'trace-attributes.png'}")
        finally:
            for proc, name in reversed(procs):
                stop(proc, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "salvador-trace-venv")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    roles = parser.add_subparsers(dest="role", help="(run by the orchestrator in the venv)")
    for role in ("producer", "worker"):
        process = roles.add_parser(role)
        process.add_argument("url", help="the salvador backend URL")
        process.add_argument("endpoint", help="the OTLP/HTTP receiver's base URL")
    shot = roles.add_parser("shoot")
    shot.add_argument("base", help="Phoenix's base URL")
    shot.add_argument("trace_id")
    shot.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.role == "producer":
        asyncio.run(producer(args.url, args.endpoint))
    elif args.role == "worker":
        asyncio.run(worker(args.url, args.endpoint))
    elif args.role == "shoot":
        shoot(args.base, args.trace_id, args.out)
    else:
        orchestrate(args.venv.resolve(), args.out.resolve())


if __name__ == "__main__":
    main()
