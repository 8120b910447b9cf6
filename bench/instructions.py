"""CPU instructions per task, counted by valgrind's callgrind: what the engine and a backend
cost, repeatable on a machine whose speed changes from minute to minute.

    python bench/instructions.py                      # this checkout
    python bench/instructions.py --tree /tmp/before --tree .   # two checkouts side by side

Tasks/s on a shared 2-core machine move by 50% between runs of the same code; instructions
do not (the same count twice, with the other core busy or idle). Each figure is the
difference between a run of `small` and one of `large` tasks, divided by `large - small`,
so start-up and imports cancel out; the submit-only runs give the submit's share, and the
drain is the rest. A tree is any checkout (e.g. `git archive <rev> | tar -x -C /tmp/x`):
its packages are imported through PYTHONPATH, with this bench's workload. Instructions
are not time (cache misses, system calls and the server's work are not in them): read
them beside `bench.py`'s table, not instead of it. Needs `valgrind` and, for the redis
and nats rows, the local Redis server and NATS JetStream server; rows that cannot run say why.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: (backend, steps, concurrency, small, large): memory at every concurrency the bench table
#: has, and the server-free and Redis backends at the concurrency where the engine counts most.
ROWS = [
    ("memory", 3, 1, 300, 1300),
    ("memory", 3, 10, 300, 1300),
    ("memory", 3, 100, 300, 1300),
    ("memory", 1, 100, 500, 2500),
    ("sqlite", 3, 10, 200, 700),
    ("sqlite", 1, 100, 300, 1300),
    ("redis", 3, 10, 200, 700),
    ("redis", 1, 100, 300, 1300),
    ("nats", 3, 10, 200, 700),
    ("nats", 1, 100, 300, 1300),
]
REDIS_URL = os.environ.get("SALVADOR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("SALVADOR_BENCH_NATS_URL", "nats://127.0.0.1:4222")


async def workload(backend: str, tasks: int, steps: int, concurrency: int, submit_only: bool) -> None:
    """Submit `tasks` no-op tasks (100 at a time), then, unless `submit_only`, drain them
    with one worker at `concurrency`."""
    from _shared import noop_workflow

    from salvador_core import Engine

    name = f"instr{os.getpid()}{secrets.token_hex(2)}"
    directory = tempfile.mkdtemp()
    url = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{directory}/bench.db",
        "redis": f"{REDIS_URL}?prefix={name}:",
        "nats": f"{NATS_URL}?stream={name}&bucket={name}",
    }[backend]
    wf, done = noop_workflow(f"instructions-{steps}", steps, tasks)
    engine = Engine.from_url(url, workflows=[wf], concurrency=concurrency)
    try:
        async with engine:
            limit = asyncio.Semaphore(100)

            async def submit() -> None:
                async with limit:
                    await engine.submit(wf.name, {"n": 1})

            await asyncio.gather(*(submit() for _ in range(tasks)))
            if not submit_only:
                worker = asyncio.create_task(engine.run(handle_signals=False))
                await asyncio.wait_for(done.wait(), 600)
                engine.stop()
                await worker
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if backend == "redis":
            import redis.asyncio as redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = [key async for key in client.scan_iter(f"{name}:*")]
            if keys:
                await client.unlink(*keys)
            await client.aclose()
        if backend == "nats":
            import nats

            nc = await nats.connect(NATS_URL)
            for stream in (name, f"KV_{name}"):
                try:
                    await nc.jetstream().delete_stream(stream)
                except nats.js.errors.NotFoundError:
                    pass
            await nc.close()


def count(tree: Path, backend: str, tasks: int, steps: int, concurrency: int, submit_only: bool) -> int:
    """Instructions of one workload process under callgrind."""
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
        "--workload", backend, str(tasks), str(steps), str(concurrency), "1" if submit_only else "0",
    ]
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1].strip())
    raise RuntimeError(f"{backend} run failed: {done.stderr.strip().splitlines()[-3:]}")


def per_task(tree: Path, row: tuple[str, int, int, int, int]) -> tuple[int, int]:
    """(drain, submit) instructions per task for `row` with `tree`'s packages."""
    backend, steps, concurrency, small, large = row
    runs = {
        (n, only): count(tree, backend, n, steps, concurrency, only)
        for n in (small, large)
        for only in (False, True)
    }
    submit = (runs[large, True] - runs[small, True]) / (large - small)
    whole = (runs[large, False] - runs[small, False]) / (large - small)
    return round(whole - submit), round(submit)


def redis_missing() -> str | None:
    try:
        import redis
    except ImportError:
        return "redis-py not installed"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"no Redis at {REDIS_URL} ({type(exc).__name__})"
    return None


def nats_missing() -> str | None:
    try:
        import nats
    except ImportError:
        return "nats-py not installed"

    async def probe() -> None:
        async with await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False) as nc:
            await nc.jetstream().account_info()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"no NATS JetStream at {NATS_URL} ({type(exc).__name__})"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="a checkout to count (repeatable)")
    parser.add_argument("--backends", default="memory,sqlite,redis")
    parser.add_argument("--workload", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        backend, tasks, steps, concurrency, submit_only = args.workload
        asyncio.run(workload(backend, int(tasks), int(steps), int(concurrency), submit_only == "1"))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    trees = [t.resolve() for t in args.tree or [Path(__file__).resolve().parent.parent]]
    wanted = set(args.backends.split(","))
    skip = {
        "redis": redis_missing() if "redis" in wanted else None,
        "nats": nats_missing() if "nats" in wanted else None,
    }
    head = " | ".join(f"{t.name}: drain | submit" for t in trees)
    print(f"| backend | workflow | concurrency | {head} |")
    print("|---|---|---:|" + "---:|---:|" * len(trees))
    for row in ROWS:
        backend, steps, concurrency = row[:3]
        if backend not in wanted:
            continue
        if skip.get(backend):
            print(f"| {backend} | {steps}-step no-op | {concurrency} | skipped: {skip[backend]} |")
            continue
        cells = []
        for tree in trees:
            drain, submit = per_task(tree, row)
            cells.append(f"{drain / 1000:,.0f}k | {submit / 1000:,.0f}k")
        print(f"| {backend} | {steps}-step no-op | {concurrency} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
