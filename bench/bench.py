"""salvador's throughput and latency, per backend, printed as a Markdown table.

    python bench/bench.py                       # memory, sqlite, redis; about 2 minutes
    python bench/bench.py --quick               # fewer tasks, for a smoke run
    python bench/bench.py --backends redis --tasks 5000

The producer and the engine (the worker) run in this one process, on one event loop:
every figure in the main table is what a single Python process achieves. A second table
puts the worker in a process of its own (`bench.py --worker URL`, started by the bench).
bench/README.md says what each column measures and how.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from _shared import POSTGRES_URL, drop_schema, local_server_pid, process_cpu_seconds

from salvador_core import ConfigurationError, Engine, StepContext, Task, TaskStatus, Workflow

ALL_BACKENDS = ("memory", "sqlite", "redis", "postgres", "nats")
#: Backends that several processes share, hence measured with the worker in its own process.
CROSS_PROCESS_BACKENDS = ("sqlite", "redis", "postgres", "nats")
CONCURRENCIES = (1, 10, 100)
#: The Redis server the bench uses; a unique key prefix per run keeps it apart from
#: anything else on the server, and every key it wrote is deleted afterwards.
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
_M = TypeVar("_M")  # what a counting pass marks its phases with

#: Longest the bench waits for one phase before it reports the run as failed.
PHASE_TIMEOUT = 120.0


# -- what one run measures -----------------------------------------------------------------


@dataclass
class Row:
    backend: str
    steps: int
    concurrency: int
    tasks: int = 0
    submits_per_s: float = 0.0
    completed_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    skipped: str | None = None


@dataclass
class RedisCounts:
    """Commands per task seen by the client (round trips) and by the server, per phase."""

    tasks: int = 0
    submit_client: float = 0.0
    run_client: float = 0.0
    run_writes: float = 0.0
    submit_server: float = 0.0
    run_server: float = 0.0
    submit_names: dict[str, float] = field(default_factory=dict)
    run_names: dict[str, float] = field(default_factory=dict)
    run_breakdown: dict[str, float] = field(default_factory=dict)


class Completions:
    """Lets a waiter know when a task's last step has run (in this process), without
    asking the backend."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.all_done = asyncio.Event()
        self.finished: set[str] = set()
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.track_ids = False

    def step_ran(self, task_id: str) -> None:
        self.count += 1
        if self.target and self.count >= self.target:
            self.all_done.set()
        if self.track_ids:
            fut = self.waiters.pop(task_id, None)
            if fut is None:
                self.finished.add(task_id)
            elif not fut.done():
                fut.set_result(None)

    async def last_step_of(self, task_id: str) -> None:
        if task_id in self.finished:
            self.finished.discard(task_id)
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters[task_id] = fut
        await fut


def workflow(steps: int, completions: Completions) -> Workflow:
    """`steps` no-op async steps; the last one tells `completions`."""
    wf = Workflow(f"bench-{steps}-step")

    async def noop(ctx: StepContext) -> None:
        return None

    async def last(ctx: StepContext) -> None:
        completions.step_ran(ctx.task.id)

    for i in range(steps - 1):
        wf.step(f"s{i + 1}", noop)
    wf.step(f"s{steps}", last)
    return wf


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def gather_limited(coros: list[Awaitable[Any]], limit: int) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(coros), limit):
        out.extend(await asyncio.gather(*coros[i : i + limit]))
    return out


async def fetch_all(engine: Engine, ids: list[str]) -> list[Task]:
    """Every task in `ids`, once it is terminal (the final write may still be in flight)."""
    tasks: dict[str, Task] = {}
    pending = list(ids)
    deadline = time.monotonic() + 30
    while pending:
        fetched = await gather_limited([engine.get_task(i) for i in pending], 200)
        for task_id, task in zip(pending, fetched, strict=True):
            if task is not None and task.status.terminal:
                tasks[task_id] = task
        pending = [i for i in pending if i not in tasks]
        if pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} task(s) never finished, e.g. {pending[0]}")
            await asyncio.sleep(0.01)
    bad = [t for t in tasks.values() if t.status is not TaskStatus.COMPLETED]
    if bad:
        raise RuntimeError(f"{len(bad)} task(s) did not complete, e.g. {bad[0].id}: {bad[0].error}")
    return [tasks[i] for i in ids]


async def submit_all(engine: Engine, name: str, n: int, concurrency: int) -> list[str]:
    """Submit `n` tasks from `concurrency` concurrent submitters."""
    ids: list[str] = []
    left = n

    async def submitter() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            ids.append(await engine.submit(name, b"{}"))

    await asyncio.gather(*(submitter() for _ in range(concurrency)))
    return ids


async def closed_loop(engine: Engine, name: str, n: int, concurrency: int, done: Completions,
                      idle_gap: float = 0.0) -> list[float]:
    """`concurrency` clients, each submitting one task and waiting for it to complete
    before the next; returns submit-to-completed latencies in seconds, from the records.
    `idle_gap` pauses between a completion and the next submit, so the worker is idle
    (blocked waiting for work) when the task arrives."""
    done.track_ids = True
    latencies: list[float] = []
    left = n

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            if idle_gap:
                await asyncio.sleep(idle_gap)
            task_id = await engine.submit(name, b"{}")
            await asyncio.wait_for(done.last_step_of(task_id), PHASE_TIMEOUT)
            (task,) = await fetch_all(engine, [task_id])
            latencies.append((task.updated_at - task.created_at).total_seconds())

    await asyncio.gather(*(client() for _ in range(concurrency)))
    done.track_ids = False
    return latencies


# -- producer and worker in separate processes ---------------------------------------------


@dataclass
class CrossProcess:
    """Submit-to-completed latency with the worker in its own process, and that worker's
    CPU use while idle."""

    backend: str
    tasks: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    idle_cpu_pct: float = 0.0
    idle_seconds: float = 0.0
    failed: str | None = None
    #: PostgreSQL only: the same with each task submitted on a caller's transaction
    #: (`connection=`), timed from the moment its COMMIT returned.
    outbox_p50_ms: float | None = None
    outbox_p99_ms: float | None = None


#: The argument that makes bench.py run as the worker process of the cross-process rows.
WORKER_FLAG = "--worker"
BENCH_SCRIPT = os.path.abspath(__file__)


def worker_main(url: str) -> int:
    """The worker process: runs the 1-step workflow on `url` until SIGTERM. Each line read
    from stdin is answered with this process's CPU seconds so far (all threads), which is
    how the bench measures an idle worker's cost without psutil."""

    def answer_cpu_questions() -> None:
        for _ in sys.stdin:
            print(f"{time.process_time():.6f}", flush=True)

    async def run() -> None:
        engine = Engine.from_url(url, workflows=[workflow(1, Completions())])
        async with engine:
            print("ready", flush=True)
            await engine.run()

    threading.Thread(target=answer_cpu_questions, daemon=True).start()
    asyncio.run(run())
    return 0


async def _cpu_seconds(worker: asyncio.subprocess.Process) -> float:
    assert worker.stdin is not None
    assert worker.stdout is not None
    worker.stdin.write(b"cpu\n")
    await worker.stdin.drain()
    return float(await asyncio.wait_for(worker.stdout.readline(), 10))


async def cross_process(setup: BackendSetup, samples: int, idle_seconds: float) -> CrossProcess:
    """The worker in a process of its own; this process submits one 1-step task at a time,
    10 ms after the previous one completed, and polls `get_task` until it has."""
    result = CrossProcess(setup.name, samples, idle_seconds=idle_seconds)
    wf = workflow(1, Completions())
    async with setup.fresh_url() as url:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, BENCH_SCRIPT, WORKER_FLAG, url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert worker.stdout is not None
            if await asyncio.wait_for(worker.stdout.readline(), 30) != b"ready\n":
                raise RuntimeError("the worker process did not start")
            async with Engine.from_url(url, workflows=[wf]) as engine:
                await asyncio.sleep(1.0)  # the worker's claim loop reaches its wait
                before, started = await _cpu_seconds(worker), time.monotonic()
                await asyncio.sleep(idle_seconds)
                used = await _cpu_seconds(worker) - before
                result.idle_cpu_pct = 100 * used / (time.monotonic() - started)
                latencies = [await _one_across(engine, wf.name) for _ in range(samples)]
                if setup.name == "postgres":
                    outbox = await _outbox_across(engine, wf.name, samples)
                    result.outbox_p50_ms = percentile(outbox, 0.5) * 1000
                    result.outbox_p99_ms = percentile(outbox, 0.99) * 1000
            result.p50_ms = percentile(latencies, 0.5) * 1000
            result.p99_ms = percentile(latencies, 0.99) * 1000
        finally:
            if worker.returncode is None:
                worker.terminate()  # SIGTERM: the engine drains and returns
                try:
                    await asyncio.wait_for(worker.wait(), 30)
                except asyncio.TimeoutError:
                    worker.kill()
                    await worker.wait()
    return result


async def _one_across(engine: Engine, name: str) -> float:
    """Submit-to-completed seconds of one task run by the other process, from its record."""
    await asyncio.sleep(0.01)
    task = await _completed(engine, await engine.submit(name, b"{}"))
    return (task.updated_at - task.created_at).total_seconds()


async def _outbox_across(engine: Engine, name: str, samples: int) -> list[float]:
    """Seconds from a caller's COMMIT returning to the task completed by the other
    process's worker, for tasks submitted on that caller's transaction (asyncpg)."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        latencies = []
        for _ in range(samples):
            await asyncio.sleep(0.01)
            async with conn.transaction():
                task_id = await engine.submit(name, b"{}", connection=conn)
            committed = datetime.now(timezone.utc)
            task = await _completed(engine, task_id)
            latencies.append((task.updated_at - committed).total_seconds())
        return latencies
    finally:
        await conn.close()


async def _completed(engine: Engine, task_id: str) -> Task:
    deadline = time.monotonic() + PHASE_TIMEOUT
    while (task := await engine.get_task(task_id)) is None or not task.status.terminal:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} did not complete within {PHASE_TIMEOUT:.0f}s")
        await asyncio.sleep(0.0005)
    if task.status is not TaskStatus.COMPLETED:
        raise RuntimeError(f"task {task_id} ended {task.status.value}: {task.error}")
    return task


def cross_process_table(rows: list[CrossProcess]) -> str:
    lines = [
        "| backend | workflow | tasks | p50 ms | p99 ms | idle worker CPU |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.failed:
            lines.append(f"| {r.backend} | 1-step no-op | - | {r.failed} | | |")
        else:
            lines.append(
                f"| {r.backend} | 1-step no-op | {r.tasks:,} | {fmt_ms(r.p50_ms)} | {fmt_ms(r.p99_ms)} | "
                f"{r.idle_cpu_pct:.2f}% of a core over {r.idle_seconds:g} s |"
            )
            if r.outbox_p50_ms is not None and r.outbox_p99_ms is not None:
                lines.append(
                    f"| {r.backend}, submitted on the caller's transaction (from its COMMIT) | "
                    f"1-step no-op | {r.tasks:,} | {fmt_ms(r.outbox_p50_ms)} | {fmt_ms(r.outbox_p99_ms)} | |"
                )
    return "\n".join(lines)


# -- Redis instrumentation -----------------------------------------------------------------


class ClientCounter:
    """Counts the commands (and socket writes) this process sends to Redis, whatever
    sends them (redis-py's pool, pipelines, or salvador's multiplexed connection): it
    wraps the one call they all write through, redis-py's `send_packed_command`, and
    parses the RESP it is given. Installed only for the counting pass, so the timed runs
    pay nothing for it."""

    def __init__(self) -> None:
        self.commands = 0
        self.writes = 0
        self.names: Counter[str] = Counter()
        self._original: Any = None

    def install(self) -> None:
        from redis.asyncio.connection import AbstractConnection

        if self._original is not None:
            return
        send = self._original = AbstractConnection.send_packed_command
        counter = self

        async def send_packed_command(conn: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
            counter.wrote(command)
            return await send(conn, command, *args, **kwargs)

        AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        from redis.asyncio.connection import AbstractConnection

        if self._original is not None:
            AbstractConnection.send_packed_command = self._original  # type: ignore[method-assign]
            self._original = None

    def wrote(self, command: Any) -> None:
        data = command.encode() if isinstance(command, str) else (
            command if isinstance(command, bytes) else b"".join(command)
        )
        self.writes += 1
        i = 0
        while i < len(data):
            # A RESP request: *<argc>\r\n then argc bulk strings $<len>\r\n<bytes>\r\n.
            end = data.index(b"\r\n", i)
            argc = int(data[i + 1 : end])
            i = end + 2
            for k in range(argc):
                end = data.index(b"\r\n", i)
                size = int(data[i + 1 : end])
                if k == 0:
                    self.names[data[end + 2 : end + 2 + size].decode(errors="replace").lower()] += 1
                i = end + 2 + size + 2
            self.commands += 1

    def snapshot(self) -> tuple[int, int, Counter[str]]:
        return self.commands, self.writes, Counter(self.names)


CLIENT_COUNTER = ClientCounter()


async def commandstats(client: Any) -> Counter[str]:
    """Calls per command on the server so far (commands run inside scripts included)."""
    info = await client.info("commandstats")
    calls: Counter[str] = Counter()
    for key, value in info.items():
        name = key.removeprefix("cmdstat_")
        if name != "info":
            calls[name] = int(value["calls"])
    return calls


async def redis_ceiling(client: Any, seconds: float) -> dict[str, float]:
    """Round trips per second a plain redis-py asyncio client gets from the server:
    one at a time, and with 100 in flight (PING, and EVALSHA of `return 1`)."""
    sha = await client.script_load("return 1")

    async def rate(op: Callable[[], Awaitable[Any]], in_flight: int) -> float:
        count = 0
        stop = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal count
            while time.perf_counter() < stop:
                await op()
                count += 1

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(in_flight)))
        return count / (time.perf_counter() - start)

    return {
        "ping_seq": await rate(client.ping, 1),
        "ping_100": await rate(client.ping, 100),
        "evalsha_100": await rate(lambda: client.evalsha(sha, 0), 100),
    }


# -- backends ------------------------------------------------------------------------------


class BackendSetup:
    """Makes a fresh, isolated URL for each run of one backend, and cleans up after."""

    name = ""

    async def unavailable(self) -> str | None:
        """Why this backend cannot be benchmarked here, or None."""
        return None

    @contextlib.asynccontextmanager
    async def fresh_url(self) -> AsyncIterator[str]:
        raise NotImplementedError
        yield ""

    def describe(self) -> str:
        return ""


class MemorySetup(BackendSetup):
    name = "memory"

    @contextlib.asynccontextmanager
    async def fresh_url(self) -> AsyncIterator[str]:
        yield "memory://"


class SQLiteSetup(BackendSetup):
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.runs = 0

    @contextlib.asynccontextmanager
    async def fresh_url(self) -> AsyncIterator[str]:
        self.runs += 1
        run_dir = self.directory / f"run-{self.runs}"
        await asyncio.to_thread(run_dir.mkdir)
        try:
            yield f"sqlite:///{run_dir / 'bench.db'}"
        finally:
            await asyncio.to_thread(shutil.rmtree, run_dir, True)

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} (file in {self.directory}, default settings)"


class RedisSetup(BackendSetup):
    name = "redis"

    def __init__(self) -> None:
        self.client: Any = None
        self.version = "?"
        self.prefix_base = f"salvador-bench-{os.getpid()}-{secrets.token_hex(3)}-"
        self.runs = 0

    async def unavailable(self) -> str | None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            return "redis-py not installed (pip install 'salvador-workflows[redis]')"
        client = aioredis.Redis(
            host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2, max_connections=200
        )
        try:
            info = await asyncio.wait_for(client.info("server"), 3)
        except Exception as exc:
            await client.aclose()
            return f"no Redis server answers on {REDIS_HOST}:{REDIS_PORT} ({type(exc).__name__})"
        self.client = client
        self.version = str(info.get("redis_version", "?"))
        return None

    @contextlib.asynccontextmanager
    async def fresh_url(self) -> AsyncIterator[str]:
        self.runs += 1
        prefix = f"{self.prefix_base}{self.runs}:"
        try:
            yield f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={prefix}"
        finally:
            await self.delete_keys(prefix)

    async def delete_keys(self, prefix: str) -> None:
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self.client.unlink(*batch)
                batch = []
        if batch:
            await self.client.unlink(*batch)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def describe(self) -> str:
        return f"Redis {self.version} on {REDIS_HOST}:{REDIS_PORT} (redis-py, key prefix {self.prefix_base}*)"


# -- one run -------------------------------------------------------------------------------


async def run_one(setup: BackendSetup, steps: int, concurrency: int, tasks: int,
                  latency_tasks: int) -> Row:
    row = Row(setup.name, steps, concurrency, tasks)
    done = Completions()
    wf = workflow(steps, done)
    async with setup.fresh_url() as url:
        engine = Engine.from_url(url, workflows=[wf], concurrency=concurrency)
        async with engine:
            # Phase 1: submit everything, no worker running.
            start = time.perf_counter()
            ids = await asyncio.wait_for(submit_all(engine, wf.name, tasks, concurrency), PHASE_TIMEOUT)
            row.submits_per_s = tasks / (time.perf_counter() - start)

            # Phase 2: a worker drains the backlog.
            done.target = tasks
            run_started = time.time()
            worker = asyncio.create_task(engine.run(handle_signals=False))
            try:
                await _unless_worker_dies(done.all_done.wait(), worker)
                records = await fetch_all(engine, ids)
                finished = max(t.updated_at.timestamp() for t in records)
                row.completed_per_s = tasks / (finished - run_started)

                # Phase 3: latency with `concurrency` tasks in flight.
                lat = await closed_loop(engine, wf.name, latency_tasks, concurrency, done)
                row.p50_ms = percentile(lat, 0.5) * 1000
                row.p99_ms = percentile(lat, 0.99) * 1000
            finally:
                engine.stop()
                await worker
    return row


async def redis_round_trips(setup: RedisSetup, tasks: int) -> RedisCounts:
    """Commands per 3-step task at concurrency 100, counted in a separate pass of the
    same workload (submit `tasks`, then drain them) with the client counter installed."""
    done = Completions()
    wf = workflow(3, done)
    CLIENT_COUNTER.install()
    try:
        async with setup.fresh_url() as url:
            engine = Engine.from_url(url, workflows=[wf], concurrency=100)
            async with engine:
                before, mid, after = await submit_then_drain(
                    engine, wf, done, tasks, lambda: _redis_mark(setup.client)
                )
    finally:
        CLIENT_COUNTER.uninstall()
    return _redis_counts(before, mid, after, tasks)


async def submit_then_drain(
    engine: Engine, wf: Workflow, done: Completions, tasks: int, mark: Callable[[], Awaitable[_M]]
) -> tuple[_M, _M, _M]:
    """The counting passes' workload: `mark()` before `tasks` tasks of `wf` are submitted
    (100 producers), after, and once one worker has run them all (and the last final
    writes, issued after the last step, have gone out)."""
    before = await mark()
    ids = await asyncio.wait_for(submit_all(engine, wf.name, tasks, 100), PHASE_TIMEOUT)
    mid = await mark()
    done.target = tasks
    worker = asyncio.create_task(engine.run(handle_signals=False))
    try:
        await _unless_worker_dies(done.all_done.wait(), worker)
        await asyncio.sleep(0.2)
        after = await mark()
        await fetch_all(engine, ids)
    finally:
        engine.stop()
        await worker
    return before, mid, after


async def _unless_worker_dies(waiting: Awaitable[Any], worker: asyncio.Task[None]) -> None:
    """Wait for `waiting`; raise at once if the worker stops (its error, if it had one),
    or after PHASE_TIMEOUT."""
    wait = asyncio.ensure_future(waiting)
    finished, _ = await asyncio.wait({wait, worker}, timeout=PHASE_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
    if wait in finished:
        return
    wait.cancel()
    if worker in finished:
        worker.result()
        raise RuntimeError("the worker stopped before all tasks completed")
    raise TimeoutError(f"tasks did not complete within {PHASE_TIMEOUT:.0f}s")


async def idle_latency(setup: BackendSetup, samples: int) -> float:
    """Submit-to-completed p50 (ms) of a 3-step task arriving at an idle worker."""
    done = Completions()
    wf = workflow(3, done)
    async with setup.fresh_url() as url:
        engine = Engine.from_url(url, workflows=[wf], concurrency=1)
        async with engine:
            worker = asyncio.create_task(engine.run(handle_signals=False))
            try:
                await asyncio.sleep(0.2)  # let the claim loop reach its blocking wait
                lat = await closed_loop(engine, wf.name, samples, 1, done, idle_gap=0.01)
            finally:
                engine.stop()
                await worker
    return percentile(lat, 0.5) * 1000


@dataclass
class Mark:
    """Counters at one instant: client commands (total, socket writes, by name) and the
    server's calls by command."""

    commands: int
    writes: int
    names: Counter[str]
    server: Counter[str]


async def _redis_mark(client: Any) -> Mark:
    server = await commandstats(client)
    commands, writes, names = CLIENT_COUNTER.snapshot()
    return Mark(commands, writes, names, server)


def _redis_counts(before: Mark, mid: Mark, after: Mark, tasks: int) -> RedisCounts:
    """Per-task counts of the submit phase (before..mid) and the run phase (mid..after),
    without each mark's own INFO."""
    info = Counter({"info": 1})
    submit_names = mid.names - before.names - info
    run_names = after.names - mid.names - info
    submit_server = mid.server - before.server
    run_server = after.server - mid.server
    return RedisCounts(
        tasks=tasks,
        submit_client=sum(submit_names.values()) / tasks,
        run_client=sum(run_names.values()) / tasks,
        run_writes=(after.writes - mid.writes - 1) / tasks,
        submit_server=sum(submit_server.values()) / tasks,
        run_server=sum(run_server.values()) / tasks,
        submit_names={k: v / tasks for k, v in submit_names.most_common(6)},
        run_names={k: v / tasks for k, v in run_names.most_common(6)},
        run_breakdown={k: v / tasks for k, v in run_server.most_common(6)},
    )


# -- the report ----------------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def fmt_ms(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| backend | workflow | concurrency | tasks | submits/s | completed/s | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        wf = f"{r.steps}-step no-op"
        if r.skipped and not r.steps:
            lines.append(f"| {r.backend} | - | - | - | skipped: {r.skipped} | | | |")
        elif r.skipped:
            lines.append(f"| {r.backend} | {wf} | {r.concurrency} | - | {r.skipped} | | | |")
        else:
            lines.append(
                f"| {r.backend} | {wf} | {r.concurrency} | {r.tasks:,} | {fmt_rate(r.submits_per_s)} | "
                f"{fmt_rate(r.completed_per_s)} | {fmt_ms(r.p50_ms)} | {fmt_ms(r.p99_ms)} |"
            )
    return "\n".join(lines)


def _per_task(counts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in counts.items())


def redis_report(rows: list[Row], ceiling: dict[str, float] | None, counts: RedisCounts | None,
                 idle_ms: float | None) -> str:
    ref = next((r for r in rows if r.backend == "redis" and r.steps == 3 and r.concurrency == 100
                and not r.skipped), None)
    if ref is None or ceiling is None or counts is None:
        return ""
    c = counts
    rt_s = ceiling["ping_100"]
    out = [
        "Redis ceiling from this process (redis-py asyncio, one connection per call in flight):",
        f"  sequential PING {fmt_rate(ceiling['ping_seq'])}/s; 100 in flight: PING "
        f"{fmt_rate(rt_s)}/s, EVALSHA(return 1) {fmt_rate(ceiling['evalsha_100'])}/s",
        f"Round trips per 3-step task (concurrency 100, commands sent by the client, counted in a "
        f"separate pass of {c.tasks:,} tasks): "
        f"submit {c.submit_client:.2f} ({_per_task(c.submit_names)}), run {c.run_client:.2f} "
        f"({_per_task(c.run_names)}; in {c.run_writes:.2f} socket writes)",
        f"  server-side commands per task, scripts' inner calls included: submit {c.submit_server:.1f}, "
        f"run {c.run_server:.1f} ({_per_task(c.run_breakdown)})",
    ]
    if c.run_client > 0:
        ceiling_tasks = rt_s / c.run_client
        ratio = ref.completed_per_s / ceiling_tasks
        out.append(
            f"Worker at concurrency 100: {fmt_rate(ref.completed_per_s)} tasks/s vs ceiling "
            f"{fmt_rate(rt_s)} RT/s / {c.run_client:.2f} RT per task = {fmt_rate(ceiling_tasks)} tasks/s: "
            f"{ratio:.0%} (target >= 50%)"
        )
    if c.submit_client > 0:
        ceiling_submits = rt_s / c.submit_client
        out.append(
            f"Submits at concurrency 100: {fmt_rate(ref.submits_per_s)}/s vs ceiling "
            f"{fmt_rate(ceiling_submits)}/s: {ref.submits_per_s / ceiling_submits:.0%}"
        )
    if idle_ms is not None:
        out.append(f"Idle worker, submit-to-completed p50: {fmt_ms(idle_ms)} ms (target < 3 ms)")
    return "\n".join(out)


# -- PostgreSQL ----------------------------------------------------------------------------


class PostgresSetup(BackendSetup):
    name = "postgres"

    def __init__(self) -> None:
        self.version = "?"
        self.runs = 0

    async def unavailable(self) -> str | None:
        try:
            import asyncpg
        except ImportError:
            return "asyncpg not installed (pip install 'salvador-workflows[postgres]')"
        try:
            conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
        except Exception as exc:
            return f"PostgreSQL at {POSTGRES_URL} unreachable: {exc}"[:120]
        self.version = str(await conn.fetchval("SHOW server_version"))
        await conn.close()
        return None

    @contextlib.asynccontextmanager
    async def fresh_url(self) -> AsyncIterator[str]:
        self.runs += 1
        schema = f"salvador_bench_{os.getpid()}_{secrets.token_hex(3)}_{self.runs}"
        try:
            yield f"{POSTGRES_URL}?schema={schema}"
        finally:
            await drop_schema(schema)

    def describe(self) -> str:
        return f"PostgreSQL {self.version} at {POSTGRES_URL} (asyncpg, a schema per run, default settings)"


async def _rate(seconds: float, loops: int, op: Callable[[int], Awaitable[Any]]) -> float:
    """Operations per second of `loops` coroutines calling `op(loop)` back to back."""
    done = 0
    stop = time.perf_counter() + seconds

    async def loop(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await op(i)
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(loops)))
    return done / (time.perf_counter() - began)


async def postgres_ceiling(seconds: float) -> dict[str, float]:
    """What plain asyncpg gets from the server from this process: sequential `SELECT 1`/s,
    sequential commits/s (one-row INSERT, autocommit), and a bare SKIP LOCKED queue's
    claim+complete/s with 8 connections (claim: UPDATE ... RETURNING; complete: DELETE), one
    job per statement; and the same queue batched as a batch-claiming worker does it: jobs/s
    of one connection claiming 100 jobs per statement and completing them in one DELETE."""
    import asyncpg

    schema = f"salvador_ceiling_{os.getpid()}"
    conns = [await asyncpg.connect(POSTGRES_URL) for _ in range(8)]
    try:
        first = conns[0]
        await first.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE; CREATE SCHEMA "{schema}"')
        await first.execute(
            f'CREATE TABLE "{schema}".q (id bigserial PRIMARY KEY, due timestamptz NOT NULL '
            "DEFAULT now(), leased boolean NOT NULL DEFAULT false, body bytea)"
        )
        await first.execute(f'CREATE INDEX ON "{schema}".q (due) WHERE NOT leased')
        select_1 = await _rate(seconds, 1, lambda i: first.fetchval("SELECT 1"))
        commits = await _rate(
            seconds, 1, lambda i: first.execute(f'INSERT INTO "{schema}".q (body) VALUES ($1)', b"x" * 200)
        )
        await first.execute(
            f'INSERT INTO "{schema}".q (body) SELECT $1 FROM generate_series(1, 200000)', b"x" * 200
        )
        claim = (
            f'UPDATE "{schema}".q SET leased = true WHERE id = (SELECT id FROM "{schema}".q '
            "WHERE NOT leased AND due <= now() ORDER BY due LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"
        )

        async def claim_complete(i: int) -> None:
            task_id = await conns[i].fetchval(claim)
            await conns[i].execute(f'DELETE FROM "{schema}".q WHERE id = $1', task_id)

        queue = await _rate(seconds, 8, claim_complete)
        claim_100 = claim.replace("WHERE id = (", "WHERE id IN (").replace("LIMIT 1", "LIMIT 100")
        jobs, began = 0, time.perf_counter()
        while time.perf_counter() < began + seconds:
            ids = [row["id"] for row in await first.fetch(claim_100)]
            await first.execute(f'DELETE FROM "{schema}".q WHERE id = any($1::bigint[])', ids)
            jobs += len(ids)
        batched = jobs / (time.perf_counter() - began)
        await first.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        for conn in conns:
            await conn.close()
    return {"select_1": select_1, "commits": commits, "claim_complete_8": queue, "batched_100": batched}


async def postgres_depth(depths: list[int], seconds: float, rounds: int = 5) -> dict[int, float]:
    """salvador's claim+release per second (one claimer, backend calls only) with `depth` tasks
    pending in the workflow, the rows written straight into a fresh schema per depth. The
    depths take turns, `rounds` windows of `seconds` each, and each gets the median of its
    windows: measured one after the other, a change of the machine's load between the two
    would pass for an effect of the depth."""
    import asyncpg

    from salvador_core.task import encode_task, new_task_id
    from salvador_postgres import PostgresBackend

    backends: dict[int, PostgresBackend] = {}
    windows: dict[int, list[float]] = {depth: [] for depth in depths}
    try:
        for depth in depths:
            schema = f"salvador_depth_{os.getpid()}_{depth}"
            backend = backends[depth] = PostgresBackend.from_url(f"{POSTGRES_URL}?schema={schema}")
            await backend.open()
            record = encode_task(Task(id=new_task_id(), workflow="deep", version=1))
            conn = await asyncpg.connect(POSTGRES_URL)
            try:
                await conn.execute(
                    f'INSERT INTO "{schema}".tasks (id, workflow, record, status, version, updated_at, '
                    "q_workflow, q_due) SELECT lpad(to_hex(g), 32, '0'), 'deep', $1, 'pending', 1, now(), "
                    "'deep', now() - make_interval(secs => $2 - g) FROM generate_series(1, $2) AS g",
                    record, depth,
                )
                await conn.execute(f'VACUUM ANALYZE "{schema}".tasks')
            finally:
                await conn.close()
        for _ in range(rounds):
            for depth, backend in backends.items():

                async def claim_release(i: int, backend: PostgresBackend = backend) -> None:
                    claim = await backend.claim("deep", lease=30, wait=0)
                    assert claim is not None
                    await backend.release(claim)  # due again at once: the depth stays the same

                windows[depth].append(await _rate(seconds, 1, claim_release))
    finally:
        for depth, backend in backends.items():
            await backend.close()
            await drop_schema(f"salvador_depth_{os.getpid()}_{depth}")
    return {depth: percentile(rates, 0.5) for depth, rates in windows.items()}


async def postgres_statements(setup: PostgresSetup, steps: int, tasks: int) -> dict[str, float]:
    """Statements per task, counted in a separate pass of the same workload (submit `tasks`
    `steps`-step tasks at concurrency 100, then a worker drains them at concurrency 100),
    on the client: every statement of the backend goes through its pool wrapper, and each
    is one round trip and one commit. `submit`: per submit; the others per task while the
    worker runs, by kind (`claim`, `checkpoint` and `settle` count statements, however many
    tasks each carried; `other`: anything else)."""
    from salvador_postgres import PostgresBackend

    counts: Counter[str] = Counter()
    done = Completions()
    wf = workflow(steps, done)
    async with setup.fresh_url() as url:
        engine = Engine.from_url(url, workflows=[wf], concurrency=100)
        async with engine:
            backend = engine.backend
            assert isinstance(backend, PostgresBackend)
            sql = backend._sql
            kinds = {sql.claim(1 << i): "claim" for i in range(11)}  # every size of claim
            kinds.update({sql.update: "checkpoint", sql.update_many: "checkpoint",
                          sql.settle: "settle", sql.settle_many: "settle"})
            db = backend._db()
            for method in ("fetch", "fetchrow", "fetchval", "execute"):
                send = getattr(db, method)

                async def counted(statement: str, *args: Any, send: Any = send) -> Any:
                    counts[kinds.get(statement, "other")] += 1
                    return await send(statement, *args)

                setattr(db, method, counted)
            before, mid, after = await submit_then_drain(engine, wf, done, tasks, lambda: _snapshot(counts))
    submit = sum((mid - before).values()) / tasks
    ran = after - mid
    return {"submit": submit, **{k: ran[k] / tasks for k in ("claim", "checkpoint", "settle", "other")}}


async def _snapshot(counts: Counter[str]) -> Counter[str]:
    return Counter(counts)


async def one_step_rows(setup: BackendSetup, plan: Plan, rows: list[Row]) -> bool:
    """The 1-step rows at concurrency 1 and 10 (the main plan runs 1-step only at 100);
    True when one failed (its row says why)."""
    failed = False
    for c in (1, 10):
        n = max(20, plan.tasks // 10) if c == 1 else plan.tasks
        print(f"[{setup.name}] 1-step, concurrency {c}, {n} tasks ...", file=sys.stderr, flush=True)
        try:
            rows.append(await run_one(setup, 1, c, n, plan.latency_samples(c, n)))
        except Exception as exc:
            failed = True
            rows.append(Row(setup.name, 1, c, skipped=f"FAILED: {type(exc).__name__}: {exc}"[:160]))
    return failed


async def postgres_section(setup: PostgresSetup, plan: Plan, rows: list[Row]) -> tuple[str, bool]:
    """The 1-step rows at concurrency 1 and 10 (the main plan runs 1-step only at 100), the
    server's ceiling and claims at depth measured in the same run, every row at concurrency
    10 and 100 as a share of the ceiling, and the statements per task. Returns the text to
    print and whether something failed."""
    failed = await one_step_rows(setup, plan, rows)
    print("[postgres] ceiling and claims at depth ...", file=sys.stderr, flush=True)
    try:
        ceiling = await postgres_ceiling(0.5 if plan.quick else 1.5)
        deep = 100_000 if plan.quick else 1_000_000
        depth = await postgres_depth([1_000, deep], 0.5 if plan.quick else 1.0)
    except Exception as exc:
        return f"postgres: ceiling/depth FAILED: {type(exc).__name__}: {exc}", True
    out = [
        "PostgreSQL ceiling from this process (plain asyncpg, same run):",
        f"  sequential SELECT 1 {fmt_rate(ceiling['select_1'])}/s, sequential commits "
        f"{fmt_rate(ceiling['commits'])}/s, bare SKIP LOCKED claim+complete with 8 connections "
        f"{fmt_rate(ceiling['claim_complete_8'])}/s (one job per statement), the same batched "
        f"(one connection, 100 jobs per claim and per complete) {fmt_rate(ceiling['batched_100'])} jobs/s",
    ]
    for row in sorted(rows, key=lambda r: (r.steps, r.concurrency)):
        if row.backend != "postgres" or row.skipped or row.concurrency < 10:
            continue
        rate = row.completed_per_s
        out.append(
            f"  {row.steps}-step tasks, one worker at concurrency {row.concurrency}: {fmt_rate(rate)}/s = "
            f"{rate / ceiling['claim_complete_8']:.0%} of the bare queue ceiling, "
            f"{rate / ceiling['batched_100']:.0%} of the batched one"
        )
    (small, small_rate), (deep, deep_rate) = sorted(depth.items())
    out.append(
        f"  claim+release/s, one claimer (median of 5 alternating 1 s windows each): "
        f"{fmt_rate(small_rate)} with {small:,} pending, "
        f"{fmt_rate(deep_rate)} with {deep:,} pending ({deep_rate / small_rate:.0%}; target >= 80%)"
    )
    print("[postgres] counting statements per task ...", file=sys.stderr, flush=True)
    for steps in (1, 3):
        try:
            sent = await postgres_statements(setup, steps, min(plan.tasks, 2000))
        except Exception as exc:
            failed = True
            out.append(f"  {steps}-step: counting statements FAILED: {type(exc).__name__}: {exc}"[:200])
            continue
        ran = sum(v for k, v in sent.items() if k != "submit")
        out.append(
            f"  {steps}-step at concurrency 100, statements (round trips, commits) per task while the "
            f"worker runs: {ran:.3f} (claim {sent['claim']:.3f}, checkpoint {sent['checkpoint']:.3f}, "
            f"settle {sent['settle']:.3f}, other {sent['other']:.3f}); per submit: {sent['submit']:.2f}"
        )
    return "\n".join(out), failed


# -- NATS ----------------------------------------------------------------------------------

#: The NATS server the bench uses; each run gets a stream and a KV bucket of its own, both
#: deleted afterwards.
NATS_URL = os.environ.get("SALVADOR_BENCH_NATS_URL", "nats://127.0.0.1:4222")


class NatsSetup(BackendSetup):
    name = "nats"

    def __init__(self) -> None:
        self.version = "?"
        self.base = f"bench{os.getpid()}x{secrets.token_hex(3)}"
        self.runs = 0

    async def unavailable(self) -> str | None:
        try:
            import nats
        except ImportError:
            return "nats-py not installed (pip install 'salvador-workflows[nats]')"
        try:
            nc = await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False)
        except Exception as exc:
            return f"no NATS server answers at {NATS_URL} ({type(exc).__name__})"
        try:
            self.version = str(nc.connected_server_version)
            await nc.jetstream().account_info()
        except Exception as exc:
            return f"NATS at {NATS_URL} has no JetStream ({type(exc).__name__})"
        finally:
            await nc.close()
        return None

    @contextlib.asynccontextmanager
    async def fresh_url(self) -> AsyncIterator[str]:
        self.runs += 1
        name = f"{self.base}r{self.runs}"
        try:
            yield f"{NATS_URL}?stream={name}&bucket={name}"
        finally:
            await _nats_delete_streams([name, f"KV_{name}"])

    def describe(self) -> str:
        return (f"NATS {self.version} at {NATS_URL} (nats-py; file storage, one stream and KV bucket "
                f"per run, named {self.base}*)")


async def _nats_delete_streams(names: list[str]) -> None:
    import nats

    nc = await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
    finally:
        await nc.close()


async def nats_ceiling(seconds: float) -> dict[str, float]:
    """What plain nats-py gets from the server in this process, on a throwaway work-queue
    stream with file storage: JetStream publishes acknowledged per second (100 in flight),
    and messages fetched and acked per second (pull batches of 100, each message acked)."""
    import nats
    from nats.js import api

    name = f"benchceiling{os.getpid()}x{secrets.token_hex(3)}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    try:
        await js.add_stream(name=name, subjects=[f"{name}.>"], retention=api.RetentionPolicy.WORK_QUEUE,
                            storage=api.StorageType.FILE)
        published = 0
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()

        async def publisher() -> None:
            nonlocal published
            while time.perf_counter() < deadline:
                await js.publish(f"{name}.q", b"x")
                published += 1

        await asyncio.gather(*(publisher() for _ in range(100)))
        publish_rate = published / (time.perf_counter() - started)
        sub = await js.pull_subscribe(f"{name}.q", durable="c", stream=name)
        fetched = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline and fetched < published:
            for msg in await sub.fetch(100, timeout=2):
                await msg.ack()
                fetched += 1
        await nc.flush()
        fetch_rate = fetched / (time.perf_counter() - started)
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
        await nc.close()
    return {"publish_ack": publish_rate, "fetch_ack": fetch_rate}


async def nats_requests(setup: NatsSetup, steps: int, tasks: int) -> dict[str, float]:
    """What the backend sends per task, counted in a separate pass of the same workload
    (submit `tasks` `steps`-step tasks, then a worker drains them at concurrency 100):
    `submit` request-replies per submit; per task while the worker runs, `requests`
    (request-replies: record reads and writes, publishes the server acknowledges), `pulls`
    (pull requests) and `acks` (acks and naks, not waited for)."""
    from nats.aio.client import Client

    from salvador_nats.pulls import Inbox

    counts: Counter[str] = Counter()
    request, pull, send = Inbox.request, Inbox.pull, Client._send_command

    async def counted_request(self: Inbox, subject: str, payload: bytes, **kwargs: Any) -> Any:
        counts["requests"] += 1
        return await request(self, subject, payload, **kwargs)

    async def counted_pull(self: Inbox, api_subject: str, **kwargs: Any) -> Any:
        counts["pulls"] += 1
        return await pull(self, api_subject, **kwargs)

    async def counted_send(self: Client, command: bytes, *args: Any, **kwargs: Any) -> Any:
        # Every publish reaches the client's command buffer here, nats-py's own and the
        # backend's leaner one alike.
        if command.startswith((b"PUB $JS.ACK.", b"HPUB $JS.ACK.")):
            counts["acks"] += 1
        return await send(self, command, *args, **kwargs)

    done = Completions()
    wf = workflow(steps, done)
    Inbox.request, Inbox.pull, Client._send_command = counted_request, counted_pull, counted_send  # type: ignore[method-assign]
    try:
        async with setup.fresh_url() as url:
            engine = Engine.from_url(url, workflows=[wf], concurrency=100)
            async with engine:
                before, mid, after = await submit_then_drain(
                    engine, wf, done, tasks, lambda: _snapshot(counts)
                )
    finally:
        Inbox.request, Inbox.pull, Client._send_command = request, pull, send  # type: ignore[method-assign]
    submit = (mid["requests"] - before["requests"]) / tasks
    ran = after - mid
    return {"submit": submit, **{k: ran[k] / tasks for k in ("requests", "pulls", "acks")}}


async def nats_cpu(setup: NatsSetup, steps: int, tasks: int) -> tuple[float, float | None]:
    """CPU seconds per task while one worker (concurrency 100) drains `tasks` `steps`-step
    tasks, in a pass of its own (no counters): this process's, and the NATS server's when it
    runs on this machine (None otherwise). On a small machine the two share the cores, so a
    change is judged by their sum, not by the worker's share alone."""
    parts = urlsplit(NATS_URL)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    pid = local_server_pid(parts.port or 4222) if local else None

    async def mark() -> tuple[float, float | None]:
        return time.process_time(), None if pid is None else process_cpu_seconds(pid)

    done = Completions()
    wf = workflow(steps, done)
    async with setup.fresh_url() as url:
        engine = Engine.from_url(url, workflows=[wf], concurrency=100)
        async with engine:
            _, mid, after = await submit_then_drain(engine, wf, done, tasks, mark)
    server = None if after[1] is None or mid[1] is None else (after[1] - mid[1]) / tasks
    return (after[0] - mid[0]) / tasks, server


async def nats_section(setup: NatsSetup, plan: Plan, rows: list[Row]) -> tuple[str, bool]:
    """The 1-step rows at concurrency 1 and 10 (the main plan runs 1-step only at 100), the
    server's ceiling measured in the same run, how close the backend gets to it, and what
    it sends per task. Returns the text to print and whether something failed."""
    failed = await one_step_rows(setup, plan, rows)
    print("[nats] ceiling ...", file=sys.stderr, flush=True)
    try:
        ceiling = await nats_ceiling(1.0 if plan.quick else 3.0)
    except Exception as exc:
        return f"NATS ceiling FAILED: {type(exc).__name__}: {exc}", True
    out = [
        "NATS ceiling from this process (plain nats-py, file storage, same server, same run): "
        f"JetStream publish+ack {fmt_rate(ceiling['publish_ack'])}/s (100 in flight), "
        f"fetch+ack {fmt_rate(ceiling['fetch_ack'])}/s (pull batches of 100)",
    ]
    for row in rows:
        if row.backend != "nats" or row.skipped or row.concurrency < 10:
            continue
        out.append(
            f"  {row.steps}-step at concurrency {row.concurrency}: submits {fmt_rate(row.submits_per_s)}/s = "
            f"{row.submits_per_s / ceiling['publish_ack']:.0%} of publish+ack; completed "
            f"{fmt_rate(row.completed_per_s)}/s = {row.completed_per_s / ceiling['fetch_ack']:.0%} of "
            "fetch+ack"
        )
    print("[nats] counting what is sent per task ...", file=sys.stderr, flush=True)
    for steps in (1, 3):
        try:
            sent = await nats_requests(setup, steps, min(plan.tasks, 2000))
        except Exception as exc:
            failed = True
            out.append(f"  {steps}-step: counting requests FAILED: {type(exc).__name__}: {exc}"[:200])
            continue
        out.append(
            f"  {steps}-step, sent per task while the worker runs: {sent['requests']:.2f} request-replies, "
            f"{sent['pulls']:.3f} pull requests, {sent['acks']:.2f} acks (not waited for); "
            f"per submit: {sent['submit']:.2f} request-replies"
        )
        try:
            worker_cpu, server_cpu = await nats_cpu(setup, steps, min(plan.tasks, 3000))
        except Exception as exc:
            failed = True
            out.append(f"  {steps}-step: measuring CPU FAILED: {type(exc).__name__}: {exc}"[:200])
            continue
        server = "not measured (not on this machine)" if server_cpu is None else fmt_us(server_cpu)
        out.append(
            f"  {steps}-step, CPU per task while the worker drains (a pass of its own, concurrency 100): "
            f"this process {fmt_us(worker_cpu)}, nats-server {server}"
        )
    return "\n".join(out), failed


# -- main ----------------------------------------------------------------------------------


@dataclass
class Plan:
    backends: list[str]
    tasks: int
    quick: bool

    def runs(self) -> Iterator[tuple[int, int, int, int]]:
        """(steps, concurrency, tasks, latency samples) for each row of a backend."""
        for c in CONCURRENCIES:
            n = max(20, self.tasks // 10) if c == 1 else self.tasks
            yield 3, c, n, self.latency_samples(c, n)
        yield 1, 100, self.tasks, self.latency_samples(100, self.tasks)

    def latency_samples(self, concurrency: int, tasks: int) -> int:
        return min(tasks, max(100 if not self.quick else 30, 5 * concurrency))


async def bench(plan: Plan) -> int:
    rows: list[Row] = []
    notes: list[str] = []
    ceiling: dict[str, float] | None = None
    counts: RedisCounts | None = None
    idle: dict[str, float] = {}
    pg_text = ""
    across: list[CrossProcess] = []
    nats_text = ""
    failed = False
    with tempfile.TemporaryDirectory(prefix="salvador-bench-") as tmp:
        setups: dict[str, BackendSetup] = {
            "memory": MemorySetup(), "sqlite": SQLiteSetup(Path(tmp)), "redis": RedisSetup(),
            "postgres": PostgresSetup(), "nats": NatsSetup(),
        }
        for name in plan.backends:
            setup = setups[name]
            reason = await setup.unavailable()
            if reason is None:
                reason = await _probe(setup)
            if reason is not None:
                print(f"[{name}] skipped: {reason}", file=sys.stderr, flush=True)
                rows.append(Row(name, 0, 0, skipped=reason))
                continue
            if setup.describe():
                notes.append(setup.describe())
            for steps, c, n, m in plan.runs():
                print(f"[{name}] {steps}-step, concurrency {c}, {n} tasks ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                try:
                    row = await run_one(setup, steps, c, n, m)
                except Exception as exc:
                    failed = True
                    row = Row(name, steps, c, skipped=f"FAILED: {type(exc).__name__}: {exc}"[:160])
                rows.append(row)
                print(f"[{name}]   done in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
            try:
                idle[name] = await idle_latency(setup, 30 if plan.quick else 100)
            except Exception as exc:
                failed = True
                notes.append(f"{name}: idle-worker latency FAILED: {type(exc).__name__}: {exc}")
            if name in CROSS_PROCESS_BACKENDS:
                print(f"[{name}] producer and worker in separate processes ...", file=sys.stderr, flush=True)
                try:
                    across.append(await cross_process(
                        setup, 50 if plan.quick else 300, 3.0 if plan.quick else 10.0))
                except Exception as exc:
                    failed = True
                    across.append(CrossProcess(name, failed=f"FAILED: {type(exc).__name__}: {exc}"[:160]))
            if isinstance(setup, RedisSetup):
                try:
                    counts = await redis_round_trips(setup, min(plan.tasks, 2000))
                except Exception as exc:
                    failed = True
                    notes.append(f"redis: counting round trips FAILED: {type(exc).__name__}: {exc}")
                ceiling = await redis_ceiling(setup.client, 0.5 if plan.quick else 1.5)
                await setup.close()
            if isinstance(setup, PostgresSetup):
                pg_text, pg_failed = await postgres_section(setup, plan, rows)
                failed = failed or pg_failed
            if isinstance(setup, NatsSetup):
                nats_text, nats_failed = await nats_section(setup, plan, rows)
                failed = failed or nats_failed

    print()
    print(f"salvador bench: one process (producer and engine on one event loop), "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}")
    for note in notes:
        print(f"  {note}")
    print()
    print(table(rows))
    print()
    if idle:
        print("Idle worker, 3-step submit-to-completed p50: "
              + ", ".join(f"{k} {fmt_ms(v)} ms" for k, v in idle.items()))
    if across:
        print()
        print("Producer and worker in separate processes (one task at a time; the worker idle "
              "in between):")
        print()
        print(cross_process_table(across))
        print()
    report = redis_report(rows, ceiling, counts, idle.get("redis"))
    if report:
        print(report)
    if pg_text:
        print()
        print(pg_text)
    if nats_text:
        print()
        print(nats_text)
    return 1 if failed else 0


async def _probe(setup: BackendSetup) -> str | None:
    """None when the backend's URL scheme loads and opens, else why not."""
    try:
        async with setup.fresh_url() as url:
            engine = Engine.from_url(url, workflows=[workflow(1, Completions())])
            async with engine:
                pass
    except ConfigurationError as exc:
        return str(exc).split(";")[0][:120]
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:120]
    return None


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == WORKER_FLAG:
        return worker_main(sys.argv[2])
    parser = argparse.ArgumentParser(description="salvador's throughput and latency per backend.")
    parser.add_argument(
        "--backends", default=",".join(ALL_BACKENDS),
        help=f"comma-separated, from {', '.join(ALL_BACKENDS)} (default: all)",
    )
    parser.add_argument(
        "--tasks", type=int, default=None,
        help="tasks per run at concurrency 10 and 100 (a tenth at concurrency 1); default 5000, "
        "300 with --quick",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in ALL_BACKENDS]
    if unknown or not backends:
        parser.error(f"unknown backend(s) {unknown}; choose from {', '.join(ALL_BACKENDS)}")
    tasks = args.tasks if args.tasks is not None else (300 if args.quick else 5000)
    if tasks < 1:
        parser.error("--tasks must be at least 1")
    return asyncio.run(bench(Plan(backends, tasks, args.quick)))


if __name__ == "__main__":
    sys.exit(main())
