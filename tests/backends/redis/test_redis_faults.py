"""Redis fault injection with real processes: workers SIGKILLed, private redis-servers
SIGKILLed and restarted (with and without AOF), client connections killed under load,
hostile names and tenant prefixes on a real 3-master cluster, and claim cost at depth.

Every server here is private (free port, tmp dir, killed by PID); the shared Redis on 6379
is never touched. What ran is counted from the side effects the steps append to a log
(tests/helpers/worker_app.py), not from the engine's own records.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from salvador_core import ConfigurationError, Engine, Task, TaskStatus
from tests.helpers.redis_servers import RedisCluster, RedisServer, ServerFactory, command, unique
from tests.helpers.workers import Workers, all_ran, all_tasks, count_of, effects, submit_many, wait_for

#: Figures measured while the tests run, printed at the end of the session (-s) or kept
#: for the report in `pytest -rA` output via the test's own prints.
FIGURES: dict[str, Any] = {}

AOF = ("--appendonly", "yes", "--appendfsync", "always")
NO_PERSISTENCE = ("--appendonly", "no")


# -- processes ------------------------------------------------------------------------






# -- 1. a worker SIGKILLed in the middle of a step -----------------------------------------


@pytest.mark.asyncio
async def test_worker_killed_mid_step_resumes_that_step_after_the_lease(
    redis_server_factory: ServerFactory,
    producer_for: Callable[[str], Awaitable[Engine]],
    workers_for: Callable[[str], Workers],
    workdir: Path,
) -> None:
    server = redis_server_factory(*AOF)
    url = server.url(unique("kill9:"))
    producer = await producer_for(url)
    workers = workers_for(url)
    task_id = await producer.submit("counted", {"order": "A-1"})

    doomed = workers.start("--block", "step2-hang", "--lease", "1.5")
    await wait_for(lambda: (workdir / f"in-two-{task_id}").exists(), 30, "step two to start")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)

    crashed = await producer.get_task(task_id)
    assert crashed is not None
    assert (crashed.status, crashed.step, crashed.attempt) == (TaskStatus.RUNNING, 1, 1)

    killed_at = time.monotonic()
    successor = workers.start("--lease", "1.5")

    async def completed() -> bool:
        task = await producer.get_task(task_id)
        return task is not None and task.status is TaskStatus.COMPLETED

    await wait_for(completed, 30, "the task to complete on the second worker")
    resumed_after = time.monotonic() - killed_at
    FIGURES["sigkill_worker_resumed_after_s"] = round(resumed_after, 2)
    assert resumed_after >= 1.0, "resumed before the dead worker's lease expired"
    done = await producer.get_task(task_id)
    assert done is not None
    ran = effects(workdir)
    assert ran[("one", task_id)] == 1, "step one was re-run after the crash"
    assert ran[("two", task_id)] == 1
    assert ran[("three", task_id)] == 1
    assert done.results["two"]["pid"] == successor.pid
    assert done.results["one"] == 1


# -- 2. an AOF server SIGKILLed and restarted with 1,000 tasks in flight ----------------------


@pytest.mark.slow
@pytest.mark.asyncio
async def test_aof_server_killed_and_restarted_loses_no_task(
    redis_server_factory: ServerFactory,
    producer_for: Callable[[str], Awaitable[Engine]],
    workers_for: Callable[[str], Workers],
    workdir: Path,
) -> None:
    server = redis_server_factory(*AOF)
    url = server.url(unique("aof:"))
    producer = await producer_for(url)
    ids = await submit_many(producer, 1000)
    workers = workers_for(url)
    for _ in range(2):
        workers.start("--concurrency", "8", "--lease", "2")

    await wait_for(lambda: count_of(workdir, "three") >= 250, 60, "a quarter of the tasks to finish")
    done_before = count_of(workdir, "three")
    server.kill()
    down_at = time.monotonic()
    # Let the workers hit the dead server (claims, checkpoints, heartbeats all fail).
    await asyncio.sleep(1.0)
    restart_s = server.start()
    up_at = time.monotonic()
    progress_at_restart = count_of(workdir, "three")

    await wait_for(
        lambda: count_of(workdir, "three") > progress_at_restart, 30, "work to resume after the restart"
    )
    recovered_s = time.monotonic() - up_at

    async def every_task_completed() -> bool:
        page = await producer.list_tasks(status=TaskStatus.COMPLETED, limit=1000)
        return len(page.tasks) == 1000

    await wait_for(every_task_completed, 120, "all 1,000 tasks to complete")
    tasks = {t.id: t for t in await all_tasks(producer)}
    assert set(tasks) == set(ids), "tasks were lost or invented across the restart"
    assert {t.status for t in tasks.values()} == {TaskStatus.COMPLETED}
    ran = effects(workdir)
    for step in ("one", "two", "three"):
        missing = [tid for tid in ids if ran[(step, tid)] == 0]
        assert not missing, f"step {step} never ran for {len(missing)} task(s)"
    extra = sum(ran.values()) - 3 * len(ids)
    # Only a step running when the server died may run again: at most one per slot.
    assert extra <= 16, f"{extra} step executions replayed; at most the 16 in flight may be"
    for proc in workers.procs:
        assert proc.poll() is None, f"a worker crashed: {workers.log_of(proc)[-2000:]}"
    FIGURES["aof_restart"] = {
        "completed_before_kill": done_before,
        "down_s": round(up_at - down_at, 2),
        "server_restart_s": round(restart_s, 3),
        "first_completion_after_restart_s": round(recovered_s, 2),
        "replayed_steps": extra,
    }
    print(f"\nAOF restart figures: {FIGURES['aof_restart']}")


# -- 3. a server without persistence killed and restarted -----------------------------------


@pytest.mark.asyncio
async def test_unpersisted_server_restart_keeps_the_worker_serving_new_work(
    redis_server_factory: ServerFactory,
    producer_for: Callable[[str], Awaitable[Engine]],
    workers_for: Callable[[str], Workers],
    workdir: Path,
) -> None:
    server = redis_server_factory(*NO_PERSISTENCE)
    url = server.url(unique("volatile:"))
    producer = await producer_for(url)
    workers = workers_for(url)
    worker = workers.start("--concurrency", "4", "--lease", "2")
    old = await submit_many(producer, 50, tag="old")
    await wait_for(lambda: count_of(workdir, "three") >= 50, 30, "the first batch to finish")

    log_before = len(workers.log_of(worker))
    server.kill()
    await wait_for(
        lambda: "ERROR" in workers.log_of(worker)[log_before:], 15, "the worker to log the outage"
    )
    restart_s = server.start()
    up_at = time.monotonic()
    outage_log = workers.log_of(worker)[log_before:]

    new = await submit_many(producer, 50, tag="new")  # the producer reconnects by itself
    await wait_for(
        lambda: all_ran(workdir, "three", new), 30, "new work after the restart"
    )
    FIGURES["volatile_restart"] = {
        "server_restart_s": round(restart_s, 3),
        "new_work_done_after_s": round(time.monotonic() - up_at, 2),
    }
    assert worker.poll() is None, f"the worker died: {workers.log_of(worker)[-2000:]}"
    for tid in new:
        task = await producer.get_task(tid)
        assert task is not None
        assert task.status is TaskStatus.COMPLETED
    survivors = [tid for tid in old if await producer.get_task(tid) is not None]
    assert not survivors, "tasks survived a restart without persistence?"
    # A clear error: names what failed and where, without a traceback storm or a password.
    errors = [line for line in outage_log.splitlines() if " ERROR " in line]
    assert errors, outage_log
    assert any(f"127.0.0.1:{server.port}" in line for line in errors), errors[:5]
    assert "internal error" not in outage_log, outage_log[-3000:]
    print(f"\nvolatile restart: {FIGURES['volatile_restart']}; first error: {errors[0]}")


# -- 4. client connections killed while a worker claims and saves --------------------------


@pytest.mark.asyncio
@pytest.mark.timeout(360)  # 3,000 tasks: well under a minute alone, longer on a shared machine
async def test_client_kills_during_claims_and_saves_lose_nothing(
    redis_server_factory: ServerFactory,
    producer_for: Callable[[str], Awaitable[Engine]],
    workers_for: Callable[[str], Workers],
    workdir: Path,
) -> None:
    server = redis_server_factory(*NO_PERSISTENCE)
    url = server.url(unique("clientkill:"))
    producer = await producer_for(url)
    ids = await submit_many(producer, 3000)
    workers = workers_for(url)
    worker = workers.start("--concurrency", "4", "--lease", "1")

    stop = threading.Event()
    rounds: list[int] = []

    def killer() -> None:
        # A separate admin connection; CLIENT KILL skips the caller itself (SKIPME yes).
        while not stop.is_set() and len(rounds) < 60:
            reply = command(server.port, "CLIENT", "KILL", "TYPE", "normal")
            rounds.append(int(reply[1:].strip()) if reply.startswith(b":") else 0)
            stop.wait(0.02)

    await wait_for(lambda: count_of(workdir, "one") >= 5, 30, "the worker to start")
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        await wait_for(lambda: count_of(workdir, "three") >= len(ids) or len(rounds) >= 60, 60, "kills")
    finally:
        stop.set()
        thread.join(timeout=5)
    kills = sum(1 for n in rounds if n)

    await wait_for(
        lambda: all_ran(workdir, "three", ids), 60, "all 3,000 tasks to finish"
    )
    for tid in ids:
        task = await producer.get_task(tid)
        assert task is not None
        assert task.status is TaskStatus.COMPLETED, task
    ran = effects(workdir)
    extra = sum(ran.values()) - 3 * len(ids)
    assert worker.poll() is None, workers.log_of(worker)[-2000:]
    FIGURES["client_kill"] = {
        "kill_rounds": len(rounds),
        "rounds_that_killed": kills,
        "connections_killed": sum(rounds),
        "replayed_steps": extra,
    }
    print(f"\nclient kill figures: {FIGURES['client_kill']}")
    assert kills >= 10, f"only {kills} kill rounds hit a connection; the test proved little"
    assert extra <= kills, f"{extra} step executions replayed for {kills} kills"


# -- 5. hostile workflow names and overlapping tenant prefixes on a real cluster -----------

#: Names that break naive key building: separators, hash-tag braces, glob characters.
HOSTILE_NAMES = [
    "order created",
    "a:b",
    "a%3Ab",
    "{tag}",
    "}{",
    "x}y{z",
    "*",
    "?",
    "[ab]",
    "back\\slash",
    "café ✓ 工作流",
    # With the name left raw in the tag, this one's ready list would be the key of "a"'s
    # idempotency key "k0}:ready" (see _exercise): `{Pa}:i:k0}:ready`.
    "a",
    "a}:i:k0",
]
#: Tenant pairs where one prefix extends the other; with workflows chosen so that naive
#: concatenation `{prefix + workflow}` would give both tenants the very same keys.
TENANT_PAIRS = [
    (("a:", "b:x"), ("a:b:", "x")),
    (("p", ":q"), ("p:", "q")),
    (("x", "ids"), ("xid", "s")),
]


class ClusterKeys:
    """Reads the private cluster around the backend (plain redis-py, every primary)."""

    def __init__(self, cluster: RedisCluster) -> None:
        import redis

        self.client = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])

    def keys(self, marker: bytes) -> set[bytes]:
        return {k for k in self.client.scan_iter(count=1000) if marker in k}

    def dumps(self, keys: set[bytes]) -> dict[bytes, bytes | None]:
        return {key: self.client.dump(key) for key in keys}

    def keyslot(self, key: bytes) -> int:
        return int(self.client.cluster_keyslot(key))  # CLUSTER KEYSLOT, asked of the server

    def close(self) -> None:
        self.client.close()


async def _exercise(backend: Any, workflow: str, n: int = 3) -> list[str]:
    """Submit `n` tasks, claim and settle one, claim and release another: every kind of
    key a workflow uses (record, ready, leased, delayed) gets written."""
    from salvador_core.task import new_task_id

    ids = []
    for i in range(n):
        task = Task(id=new_task_id(), workflow=workflow, body=f"{workflow}:{i}".encode(),
                    idempotency_key=f"k{i}}}:ready")
        ids.append((await backend.submit(task)).id)
    claim = await backend.claim(workflow, lease=30, wait=0)
    assert claim is not None
    assert claim.task_id in ids
    task = await backend.get(claim.task_id)
    await backend.settle(task.evolve(status=TaskStatus.COMPLETED), task.version, claim)
    second = await backend.claim(workflow, lease=30, wait=0)
    assert second is not None
    assert second.task_id in ids
    await backend.release(second, delay=60)
    return ids


@pytest.mark.asyncio
async def test_hostile_names_and_nested_prefixes_neither_collide_nor_escape(
    redis_cluster: RedisCluster,
) -> None:
    from salvador_redis import RedisBackend

    marker = unique("iso")[:-1]  # in every prefix, so SCAN finds only this test's keys
    view = ClusterKeys(redis_cluster)
    opened: list[Any] = []

    async def tenant(prefix: str) -> Any:
        backend = RedisBackend.from_url(redis_cluster.url(marker + prefix))
        await backend.open()
        opened.append(backend)
        return backend

    try:
        # (a) every hostile workflow name in one tenant: one slot per workflow, every key
        # under the tenant's prefix, and no workflow sees another's tasks.
        solo = await tenant("solo:")
        owned: dict[str, set[bytes]] = {}
        ids_of: dict[str, list[str]] = {}
        for name in HOSTILE_NAMES:
            before = view.keys(marker.encode())
            ids_of[name] = await _exercise(solo, name)
            owned[name] = view.keys(marker.encode()) - before
        for name, keys in owned.items():
            _check_tenant_keys(view, marker + "solo:", keys, name)
        for name in HOSTILE_NAMES:
            page = await solo.list(workflow=name, limit=100)
            assert sorted(t.id for t in page.tasks) == sorted(ids_of[name]), name
            claim = await solo.claim(name, lease=30, wait=0)
            assert claim is not None, name
            assert claim.task_id in ids_of[name], name
            await solo.release(claim)
        everything = await solo.list(limit=1000)
        assert sorted(t.id for t in everything.tasks) == sorted(i for v in ids_of.values() for i in v)

        # A prefix with a brace would open or close the hash tag: refused up front.
        for bad in ("t{", "t}"):
            with pytest.raises(ConfigurationError):
                RedisBackend.from_url(redis_cluster.url(marker + bad))

        # (b) tenants whose prefixes nest, with workflows that would alias under naive
        # concatenation: disjoint keys, the other's keys untouched, nothing visible across.
        for (p1, w1), (p2, w2) in TENANT_PAIRS:
            first, second = await tenant(p1), await tenant(p2)
            before = view.keys(marker.encode())
            ids1 = await _exercise(first, w1)
            keys1 = view.keys(marker.encode()) - before
            snapshot1 = view.dumps(keys1)
            ids2 = await _exercise(second, w2)
            keys2 = view.keys(marker.encode()) - before - keys1
            assert keys2, f"tenant {p2!r} wrote nothing new: it reused tenant {p1!r}'s keys"
            assert view.dumps(keys1) == snapshot1, f"tenant {p2!r} changed tenant {p1!r}'s keys"
            _check_tenant_keys(view, marker + p1, keys1, w1)
            _check_tenant_keys(view, marker + p2, keys2, w2)
            for mine, theirs, backend, wf in ((ids1, ids2, first, w1), (ids2, ids1, second, w2)):
                listed = {t.id for t in (await backend.list(limit=1000)).tasks}
                assert listed == set(mine), f"{wf!r}: listing crosses tenants"
                for other in theirs:
                    assert await backend.get(other) is None, "get crosses tenants"
                for other_wf in (w1, w2):
                    claim = await backend.claim(other_wf, lease=30, wait=0)
                    if claim is not None:
                        assert claim.task_id in mine, "claim crossed tenants"
                        await backend.release(claim)
    finally:
        for backend in opened:
            await backend.close()
        view.close()


def _check_tenant_keys(view: ClusterKeys, prefix: str, keys: set[bytes], workflow: str) -> None:
    """Every key starts with the tenant's prefix; a workflow's keys carry a hash tag that
    starts with the prefix too and all hash to one slot (CLUSTER KEYSLOT). The only keys
    outside it are the tenant's two documented indexes (id -> workflow, workflow names),
    written when the tenant's first task is created."""
    raw = prefix.encode()
    indexes = {raw + b"ids", raw + b"workflows"}
    own = keys - indexes
    assert own, f"workflow {workflow!r} wrote no keys of its own"
    for key in keys:
        assert key.startswith(raw), f"{key!r} escapes tenant prefix {prefix!r}"
    for key in own:
        tag = key[key.index(b"{") + 1 : key.index(b"}")] if b"{" in key else b""
        assert tag.startswith(raw), f"{key!r}: hash tag {tag!r} is not under prefix {prefix!r}"
    slots = {view.keyslot(k) for k in own}
    assert len(slots) == 1, f"workflow {workflow!r} spans slots {slots}: {sorted(own)}"


# -- 6. claim cost does not grow with queue depth -------------------------------------------

#: Fills a workflow's queue the way submit does (record, status index, queued, ready), for
#: ids `<stamp><n as 20 hex digits>`, n in [start, start+count), in one server-side loop.
#: KEYS[1]: the workflow's key base. ARGV: record before the id, record after the id,
#: stamp, start, count, updated. Test-only: a million submits would take minutes.
FILL = """
local base, pre, post, stamp = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local first, count, updated = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
for n = first, first + count - 1 do
  local id = stamp .. string.format('%020x', n)
  redis.call('HSET', base .. 't:' .. id, 'data', pre .. id .. post, 'status', 'pending',
             'version', 1, 'updated', updated)
  redis.call('ZADD', base .. 's:pending', 0, id)
  redis.call('HSET', base .. 'queued', id, 0)
  redis.call('LPUSH', base .. 'ready', id)
end
return count
"""


async def fill_queue(backend: Any, workflow: str, count: int) -> float:
    """Queue `count` pending tasks behind whatever `workflow` holds; returns seconds taken."""
    from salvador_core.task import encode_task, new_task_id

    template = Task(id=new_task_id(), workflow=workflow, body=b'{"order": 1}', version=1)
    pre, post = encode_task(template).split(template.id.encode())
    stamp = template.id[:12]
    base = backend._base(workflow)
    started = time.monotonic()
    batch = 50_000
    for start in range(0, count, batch):
        await backend._exec(
            "EVAL", FILL, 1, base, pre, post, stamp, start, min(batch, count - start),
            repr(template.updated_at.timestamp()),
        )
    return time.monotonic() - started


async def claim_rate(backend: Any, workflow: str, claims: int) -> float:
    """Claims (and acks) per second, one claimer after another: the cost of one claim."""
    started = time.perf_counter()
    for _ in range(claims):
        claim = await backend.claim(workflow, lease=60, wait=0)
        assert claim is not None
        await backend.ack(claim)
    return claims / (time.perf_counter() - started)


def evalsha_usec_per_call(server: RedisServer) -> float:
    stats = server.cli("INFO", "commandstats")
    for line in stats.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            fields = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
            return float(fields["usec_per_call"])
    return float("nan")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_claim_throughput_does_not_depend_on_queue_depth(
    redis_server_factory: ServerFactory,
) -> None:
    from salvador_core.task import new_task_id
    from salvador_redis import RedisBackend

    server = redis_server_factory(*NO_PERSISTENCE)
    claims, shallow_depth, deep_depth = 3000, 1000, 1_000_000
    async with RedisBackend.from_url(server.url(unique("depth:"))) as backend:

        async def submit(workflow: str, n: int) -> None:
            await asyncio.gather(*(
                backend.submit(Task(id=new_task_id(), workflow=workflow, body=b'{"order": 1}'))
                for _ in range(n)
            ))

        # The measured claims take the oldest tasks (real submits); the depth stays behind.
        await submit("shallow", claims + shallow_depth)
        await submit("deep", claims)
        fill_s = await fill_queue(backend, "deep", deep_depth)
        memory = server.cli("INFO", "memory").split("used_memory_human:")[1].split()[0]
        rates: dict[str, list[float]] = {"shallow": [], "deep": []}
        usec: dict[str, float] = {}
        for workflow in ("shallow", "deep"):
            server.cli("CONFIG", "RESETSTAT")
            for _ in range(3):
                rates[workflow].append(await claim_rate(backend, workflow, claims // 3))
            usec[workflow] = evalsha_usec_per_call(server)
        left = int(server.cli("LLEN", backend._base("deep") + "ready").strip())

    shallow, deep = max(rates["shallow"]), max(rates["deep"])
    FIGURES["queue_depth"] = {
        "fill_1M_s": round(fill_s, 1),
        "redis_memory": memory,
        "claims_per_s_at_1k": round(shallow),
        "claims_per_s_at_1M": round(deep),
        "ratio": round(deep / shallow, 3),
        "server_evalsha_usec_at_1k": usec["shallow"],
        "server_evalsha_usec_at_1M": usec["deep"],
    }
    print(f"\nqueue depth figures: {FIGURES['queue_depth']}")
    assert left == deep_depth, f"{left} tasks queued at the deep end, expected {deep_depth}"
    assert deep >= 0.8 * shallow, FIGURES["queue_depth"]
