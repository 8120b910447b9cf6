"""PostgreSQL fault injection with real processes, on a PRIVATE server per test (initdb in a
temp dir, a free port, stopped by PID even when the test fails): a worker SIGKILLed
mid-step, the server restarted in immediate mode (crash recovery) with 1,000 tasks in
flight, and every worker connection terminated again and again during 3,000 tasks.

What ran is counted from the side effects the steps append to a log
(tests/helpers/worker_app.py), not from the engine's own records.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from salvador_core import Engine, LeaseLostError, Task, TaskStatus
from salvador_core.task import new_task_id
from salvador_postgres import PostgresBackend
from tests.helpers.postgres_servers import PostgresServer, private_postgres
from tests.helpers.workers import (
    Workers,
    all_completed,
    all_ran,
    all_tasks,
    count_of,
    effects,
    submit_many,
    wait_for,
)

pytestmark = pytest.mark.asyncio

WORKER_APP = "salvador-worker"






def worker_url(server: PostgresServer) -> str:
    return server.url(schema="faults", application_name=WORKER_APP, poll_interval="0.2")


def producer_url(server: PostgresServer) -> str:
    return server.url(schema="faults", application_name="salvador-producer")


async def test_worker_killed_mid_step_resumes_that_step_after_the_lease(
    pg_server: PostgresServer,
    producer_for: Callable[[str], Awaitable[Engine]],
    workers_for: Callable[[str], Workers],
    workdir: Path,
) -> None:
    producer = await producer_for(producer_url(pg_server))
    workers = workers_for(worker_url(pg_server))
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
    print(f"\nSIGKILLed worker: task completed {resumed_after:.2f} s after the kill (lease 1.5 s)")
    assert resumed_after >= 1.0, "resumed before the dead worker's lease expired"
    done = await producer.get_task(task_id)
    assert done is not None
    ran = effects(workdir)
    assert ran[("one", task_id)] == 1, "step one was re-run after the crash"
    assert ran[("two", task_id)] == 1
    assert ran[("three", task_id)] == 1
    assert done.results["two"]["pid"] == successor.pid


async def test_immediate_restart_with_1000_tasks_in_flight_loses_nothing(
    pg_server: PostgresServer,
    producer_for: Callable[[str], Awaitable[Engine]],
    workers_for: Callable[[str], Workers],
    workdir: Path,
) -> None:
    producer = await producer_for(producer_url(pg_server))
    ids = await submit_many(producer, 1000)
    workers = workers_for(worker_url(pg_server))
    for _ in range(2):
        workers.start("--concurrency", "8", "--lease", "2")
    await wait_for(lambda: count_of(workdir, "three") >= 200, 60, "a fifth of the tasks to finish")

    done_before = count_of(workdir, "three")
    pg_server.stop_immediate()  # pg_ctl restart -m immediate: SIGQUIT, crash recovery
    await asyncio.sleep(1.0)  # the workers hit the dead server: claims, saves, heartbeats fail
    restart_s = pg_server.start()
    up_at = time.monotonic()
    at_restart = count_of(workdir, "three")
    await wait_for(lambda: count_of(workdir, "three") > at_restart, 30, "work to resume after the restart")
    resumed_s = time.monotonic() - up_at

    await wait_for(lambda: all_ran(workdir, "three", ids), 120, "all 1,000 tasks")

    # A last step that ran while the server died may not have been settled: its task stays
    # running until its lease ends, then its last step runs again and completes it.
    await wait_for(lambda: all_completed(producer), 30, "every task to be completed")
    tasks = {t.id: t for t in await all_tasks(producer)}
    assert set(tasks) == set(ids), "tasks were lost or invented across the restart"
    assert {t.status for t in tasks.values()} == {TaskStatus.COMPLETED}
    ran = effects(workdir)
    extra = sum(ran.values()) - 3 * len(ids)
    # Only a step running when the server died may run again: at most one per slot.
    assert extra <= 16, f"{extra} step executions replayed; at most the 16 in flight may be"
    for proc in workers.procs:
        assert proc.poll() is None, f"a worker died: {workers.log_of(proc)[-2000:]}"
    print(
        f"\nimmediate restart: {done_before} done before, server back in {restart_s:.2f} s, "
        f"first completion {resumed_s:.2f} s after, {extra} steps replayed"
    )


@pytest.mark.slow
@pytest.mark.timeout(360)  # about 85 s alone; far more when the machine is shared
async def test_terminating_worker_connections_during_3000_tasks_loses_and_reruns_nothing_checkpointed(
    pg_server: PostgresServer,
    producer_for: Callable[[str], Awaitable[Engine]],
    workers_for: Callable[[str], Workers],
    workdir: Path,
) -> None:
    producer = await producer_for(producer_url(pg_server))
    began = time.monotonic()
    ids = await submit_many(producer, 3000)
    print(f"\nsubmitted at {time.monotonic() - began:.1f} s")
    workers = workers_for(worker_url(pg_server))
    worker = workers.start("--concurrency", "4", "--lease", "1")
    await wait_for(lambda: count_of(workdir, "one") >= 5, 30, "the worker to start")

    rounds: list[int] = []
    stop = threading.Event()

    async def terminate_all() -> int:
        conn = await asyncpg.connect(pg_server.url())
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    WORKER_APP,
                )
            )
        finally:
            await conn.close()

    def killer() -> None:
        while not stop.is_set() and len(rounds) < 40:
            rounds.append(asyncio.run(terminate_all()))
            stop.wait(0.15)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        await wait_for(lambda: count_of(workdir, "three") >= len(ids) or len(rounds) >= 40, 90, "kills")
    finally:
        stop.set()
        thread.join(timeout=10)
    kills = sum(1 for n in rounds if n)
    print(f"\nkiller done at {time.monotonic() - began:.1f} s")

    try:
        await wait_for(lambda: all_ran(workdir, "three", ids), 60, "all 3,000 tasks")
    except AssertionError as exc:
        unfinished = [t for t in await all_tasks(producer) if t.status is not TaskStatus.COMPLETED]
        detail = [(t.status.value, t.step, t.attempt, t.dead_letter) for t in unfinished[:10]]
        log = workers.log_of(worker)[-2000:]
        raise AssertionError(
            f"{exc}; {len(unfinished)} unfinished, e.g. {detail}; worker log: {log}"
        ) from None
    print(f"\nall three effects at {time.monotonic() - began:.1f} s")
    # A last step whose final write's connection was terminated is settled only when its
    # lease has ended and it has run again (seen once: checked at once, one task was still
    # `running` at step 3 with every effect written).
    try:
        await wait_for(lambda: all_completed(producer), 30, "every task to be completed")
    except AssertionError:
        pass  # the assertion below names the task
    for t in await all_tasks(producer):
        assert t.status is TaskStatus.COMPLETED, t
    assert len(await all_tasks(producer)) == len(ids)
    ran = effects(workdir)
    extra = sum(ran.values()) - 3 * len(ids)
    assert worker.poll() is None, workers.log_of(worker)[-2000:]
    print(
        f"\nterminations: {len(rounds)} rounds, {kills} hit connections, {sum(rounds)} connections "
        f"terminated, {extra} step executions replayed"
    )
    assert kills >= 10, f"only {kills} rounds hit a connection; the test proved little"
    # A step is replayed only when its own checkpoint did not commit (the connection died
    # before it did): at most one per slot (4) per round that killed; a checkpointed step
    # is never run again, so never more.
    assert extra <= 4 * kills, f"{extra} step executions replayed for {kills} rounds"
    for tid in ids:
        for step in ("one", "two", "three"):
            assert ran[(step, tid)] >= 1, f"step {step} of {tid} never ran"


async def test_a_claim_forgotten_by_a_server_crash_loses_no_task_and_is_redelivered_at_once() -> None:
    """A claim commits asynchronously (one fsync fewer on the way from submit to start): a
    server crash before the WAL writer flushes it forgets the lease. The task must still be
    there and claimable at once; the forgotten claim acks nothing. (Any later synchronous
    commit, such as the run's ownership write, flushes the claim with it: WAL is written in
    order.)"""
    # fsync on, and a WAL writer that waits 10 s: only a synchronous commit reaches the disk.
    with private_postgres("fsync=on", "wal_writer_delay=10s") as server:
        url = server.url(schema="forgotten")
        async with PostgresBackend.from_url(url) as backend:
            task = await backend.submit(Task(id=new_task_id(), workflow="wf", body=b"x"))
            claim = await backend.claim("wf", lease=60, wait=2)
            assert claim is not None
            assert claim.task_id == task.id
        server.stop_immediate()  # SIGQUIT: no checkpoint, crash recovery at the next start
        server.start()
        async with PostgresBackend.from_url(url) as backend:
            again = await backend.claim("wf", lease=60, wait=5)
            assert again is not None, "the task was lost, or is still held by the crashed claim"
            assert again.task_id == task.id
            assert again.deliveries == claim.deliveries, "the forgotten claim's delivery still counts"
            with pytest.raises(LeaseLostError):
                await backend.ack(claim)
            await backend.ack(again)
