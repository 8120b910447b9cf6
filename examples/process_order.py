"""The README's process-order workflow on SQLite, then crash safety with real processes.

`make demo` runs this file. Part 1 runs one order through validate -> charge-payment ->
ship in this process. Part 2 starts a worker *process*, SIGKILLs it in the middle of
step 2 (charge-payment), starts a new worker process, and shows that the new one resumes
the task at step 2 without running step 1 again.

What ran is counted from side effects the steps leave in a file (one line per step
start and end, with the pid that ran it), not from the engine's own records, so the demo
would catch an engine that claimed progress it did not make.

    python examples/process_order.py                     # SQLite in a temporary directory
    python examples/process_order.py --url sqlite:///orders.db
    python examples/process_order.py worker URL DIR [--hang-in STEP]   # (used by part 2)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from salvador_core import Engine, RetryPolicy, StepContext, Task, Workflow

STEPS = ("validate", "charge-payment", "ship")
#: Short, so that a killed worker's task is delivered again within seconds.
LEASE_SECONDS = 2.0
EFFECTS = "effects.log"


def effect(directory: Path, step: str, event: str, task_id: str) -> None:
    """Record that `step` started or finished; small O_APPEND writes are atomic across
    processes, so every worker can append to the same file."""
    with open(directory / EFFECTS, "a") as f:
        f.write(f"{step} {event} {task_id} {os.getpid()}\n")


def say(text: str) -> None:
    print(text, flush=True)


def build(directory: Path, hang_in: str | None = None) -> Workflow:
    """The README's workflow, each step leaving side effects in `directory`. `hang_in`
    names a step that blocks for good once started, so the demo can kill it mid-step."""
    wf = Workflow("process-order")

    async def maybe_hang(ctx: StepContext, step: str) -> None:
        if step == hang_in:
            say(f"    [worker pid {os.getpid()}] ... {step} is in progress (this worker will be killed now)")
            await asyncio.sleep(3600)

    @wf.step("validate")
    def validate(ctx: StepContext) -> dict[str, str]:
        effect(directory, "validate", "start", ctx.task.id)
        order = ctx.json()
        say(f"    [worker pid {os.getpid()}] step 1/3 validate: order {order['order_id']}, "
            f"amount {order['amount']}")
        if order["amount"] <= 0:
            raise ValueError("amount must be positive")
        effect(directory, "validate", "end", ctx.task.id)
        return {"order_id": order["order_id"]}

    def refund(ctx: StepContext) -> None:
        say(f"    [worker pid {os.getpid()}] refunding {ctx.result['charge_id']}")

    @wf.step(
        "charge-payment",
        retry=RetryPolicy(max_attempts=5, initial_delay=1.0),
        timeout=30,
        compensate=refund,
    )
    async def charge_payment(ctx: StepContext) -> dict[str, str]:
        effect(directory, "charge-payment", "start", ctx.task.id)
        # ctx.idempotency_key is stable across retries and crashes: the payment API would
        # use it to charge the card once even though this step may run twice.
        say(f"    [worker pid {os.getpid()}] step 2/3 charge-payment: idempotency key "
            f"{ctx.idempotency_key}")
        await maybe_hang(ctx, "charge-payment")
        effect(directory, "charge-payment", "end", ctx.task.id)
        return {"charge_id": f"ch_{ctx.idempotency_key}"}

    @wf.step("ship")
    async def ship(ctx: StepContext) -> dict[str, str]:
        effect(directory, "ship", "start", ctx.task.id)
        order_id = ctx.results["validate"]["order_id"]
        say(f"    [worker pid {os.getpid()}] step 3/3 ship: order {order_id} "
            f"(paid with {ctx.results['charge-payment']['charge_id']})")
        effect(directory, "ship", "end", ctx.task.id)
        return {"shipped": order_id}

    return wf


#: For `salvador worker examples.process_order:engine --url sqlite:///orders.db`: the README's
#: workflow on $SALVADOR_URL, or sqlite:///orders.db (a worker's --url replaces it); the steps
#: record their side effects in the working directory. Nothing is opened until it runs.
engine = Engine.from_url(
    os.environ.get("SALVADOR_URL") or "sqlite:///orders.db", workflows=[build(Path("."))]
)


def read_effects(directory: Path, task_id: str) -> list[tuple[str, str, int]]:
    """(step, event, pid) for every side effect of `task_id`, in the order they happened."""
    rows = []
    for line in (directory / EFFECTS).read_text().splitlines():
        step, event, tid, pid = line.split()
        if tid == task_id:
            rows.append((step, event, int(pid)))
    return rows


async def wait_for(engine: Engine, task_id: str, timeout: float) -> Task:
    """The task once it reaches a terminal status; raises TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        task = await engine.get_task(task_id)
        if task is not None and task.status.terminal:
            return task
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} did not finish within {timeout}s: {task}")
        await asyncio.sleep(0.05)


# -- part 1: one order, in this process --------------------------------------------------


async def part_one(url: str, directory: Path) -> bool:
    say("== 1. process-order, worker in this process ==")
    engine = Engine.from_url(url, workflows=[build(directory)], lease=LEASE_SECONDS, poll_interval=0.2)
    async with engine:
        task_id = await engine.submit("process-order", {"order_id": "A-1001", "amount": 42.5})
        say(f"  submitted task {task_id} (stored before anything runs)")
        worker = asyncio.create_task(engine.run(handle_signals=False))
        task = await wait_for(engine, task_id, timeout=30)
        engine.stop()
        await worker
    say(f"  final status: {task.status.value}; results: {task.results}")
    return task.status.value == "completed"


# -- part 2: kill a worker process mid-step, resume in another ---------------------------


def start_worker(url: str, directory: Path, hang_in: str | None = None) -> subprocess.Popen[bytes]:
    args = [sys.executable, __file__, "worker", url, str(directory)]
    if hang_in:
        args += ["--hang-in", hang_in]
    return subprocess.Popen(args)


def wait_for_effect(directory: Path, task_id: str, step: str, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (step, "start", pid) not in read_effects(directory, task_id):
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker {pid} did not start {step} within {timeout}s")
        time.sleep(0.02)


async def part_two(url: str, directory: Path) -> bool:
    say("")
    say(f"== 2. crash safety: SIGKILL a worker process in the middle of step 2 (lease {LEASE_SECONDS:g}s) ==")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        async with Engine.from_url(url, workflows=[build(directory)]) as producer:
            task_id = await producer.submit("process-order", {"order_id": "A-1002", "amount": 99.0})
            say(f"  submitted task {task_id}")

            first = start_worker(url, directory, hang_in="charge-payment")
            workers.append(first)
            say(f"  started worker pid {first.pid}")
            wait_for_effect(directory, task_id, "charge-payment", first.pid, timeout=30)
            first.send_signal(signal.SIGKILL)
            first.wait()
            killed_at = time.monotonic()
            say(f"  SIGKILLed worker pid {first.pid} in the middle of step 2 (charge-payment)")

            second = start_worker(url, directory)
            workers.append(second)
            say(f"  started worker pid {second.pid}; it gets the task once the dead worker's lease expires")
            task = await wait_for(producer, task_id, timeout=60)
            elapsed = time.monotonic() - killed_at
            second.send_signal(signal.SIGTERM)  # graceful: the engine drains and exits
            second.wait(timeout=30)
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return report(directory, task, first.pid, second.pid, elapsed)


def report(directory: Path, task: Task, killed: int, resumer: int, elapsed: float) -> bool:
    """Print what the side effects say happened, and whether that is what the promise says."""
    effects = read_effects(directory, task.id)
    starts = Counter(step for step, event, _ in effects if event == "start")
    by_resumer = [step for step, event, pid in effects if event == "start" and pid == resumer]
    resumed_at = by_resumer[0] if by_resumer else None
    say(f"  final status: {task.status.value}; results: {task.results}")
    say("  step runs counted from side effects (file " + EFFECTS + "):")
    for step in STEPS:
        pids = [pid for s, event, pid in effects if s == step and event == "start"]
        ends = [pid for s, event, pid in effects if s == step and event == "end"]
        killed_note = ""
        if killed in pids and killed not in ends:
            killed_note = f" (pid {killed} was killed before it finished)"
        say(f"    {step:<15} started {starts[step]} time(s) by pid(s) {pids}{killed_note}")
    ok = (
        task.status.value == "completed"
        and resumed_at == "charge-payment"
        and starts["validate"] == 1
        and starts["charge-payment"] == 2
        and starts["ship"] == 1
    )
    if ok:
        say(f"  task {task.id} resumed at step 2 (charge-payment) by worker pid {resumer} and "
            f"completed {elapsed:.1f}s after the kill (the dead worker's lease: {LEASE_SECONDS:g}s); "
            "validate ran 1 time, charge-payment ran 2 times (the killed attempt and the resumed "
            "one), ship ran 1 time")
    else:
        say(f"  UNEXPECTED: task {task.id} ended {task.status.value}; the new worker started at "
            f"{resumed_at!r}; step starts {dict(starts)}")
    return ok


# -- entry points ------------------------------------------------------------------------


async def worker(url: str, directory: Path, hang_in: str | None) -> None:
    """A worker process: runs process-order until SIGTERM (or SIGKILL)."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stdout, format=f"    [worker pid {os.getpid()}] %(message)s"
    )
    engine = Engine.from_url(
        url, workflows=[build(directory, hang_in)], lease=LEASE_SECONDS, poll_interval=0.2,
        drain_timeout=5.0,
    )
    await engine.run()


async def demo(url: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="salvador-demo-") as tmp:
        directory = Path(tmp)
        (directory / EFFECTS).touch()
        url = url or f"sqlite:///{directory / 'orders.db'}"
        say(f"backend: {url}")
        ok = await part_one(url, directory)
        ok = await part_two(url, directory) and ok
    say("")
    say("demo finished: all as promised" if ok else "demo FAILED: see UNEXPECTED above")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", help="backend URL (default: SQLite in a temporary directory)")
    sub = parser.add_subparsers(dest="command")
    w = sub.add_parser("worker", help="run a worker process (part 2 starts these)")
    w.add_argument("url")
    w.add_argument("directory", type=Path)
    w.add_argument("--hang-in", choices=STEPS)
    args = parser.parse_args()
    if args.command == "worker":
        asyncio.run(worker(args.url, args.directory, args.hang_in))
        return 0
    return asyncio.run(demo(args.url))


if __name__ == "__main__":
    sys.exit(main())
