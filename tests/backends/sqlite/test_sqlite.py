"""What the SQLite backend promises beyond the conformance suite: URLs, file errors,
durability across reopening, several real processes on one file, schema versions, locks."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from salvador_core import ConfigurationError, Engine, StepContext, Workflow, connect
from salvador_core.backends.memory import MemoryBackend
from salvador_core.backends.sqlite import SCHEMA_VERSION, SQLiteBackend
from salvador_core.errors import BackendNotOpenError, BackendUnavailableError, ConflictError, LeaseLostError
from salvador_core.task import Task, TaskStatus, new_task_id, utcnow

pytestmark = pytest.mark.asyncio


def task(workflow: str = "wf", **fields: Any) -> Task:
    return Task(id=new_task_id(), workflow=workflow, **fields)


@pytest_asyncio.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    async with SQLiteBackend.from_url(f"sqlite:///{tmp_path / 't.db'}") as b:
        yield b


# -- URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///relative.db", os.path.join(os.getcwd(), "relative.db")),
        ("sqlite:///sub/dir/tasks.db", os.path.join(os.getcwd(), "sub", "dir", "tasks.db")),
        ("sqlite:////abs/path.db", "/abs/path.db"),
        ("sqlite:////abs/with%20space.db", "/abs/with space.db"),
        ("SQLITE:////abs/upper.db", "/abs/upper.db"),
    ],
)
async def test_url_paths_relative_and_absolute(url: str, expected: str) -> None:
    assert SQLiteBackend.from_url(url).path == expected


async def test_url_options_and_keywords_and_their_defaults() -> None:
    default = SQLiteBackend.from_url("sqlite:////x/t.db")
    assert (default.synchronous, default.busy_timeout) == ("normal", 5.0)
    tuned = SQLiteBackend.from_url("sqlite:////x/t.db?synchronous=FULL&busy_timeout=12.5")
    assert (tuned.synchronous, tuned.busy_timeout) == ("full", 12.5)
    keywords = SQLiteBackend.from_url("sqlite:////x/t.db", synchronous="extra", busy_timeout=0)
    assert (keywords.synchronous, keywords.busy_timeout) == ("extra", 0.0)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "has no database path"),
        ("sqlite:///", "has no database path"),
        ("sqlite://localhost/tasks.db", "names a host"),
        ("sqlite:///t.db?prefix=app", r"unknown option\(s\) \['prefix'\]; known: busy_timeout, synchronous"),
        ("sqlite:///t.db?synchronous=off", "not one of normal, full, extra"),
        ("sqlite:///t.db?busy_timeout=5000", "in seconds, not milliseconds"),
        ("sqlite:///t.db?busy_timeout=soon", "not a number of seconds"),
        ("sqlite:///t.db?busy_timeout=-1", "between 0 and 600"),
        ("sqlite:///t.db?synchronous=full&synchronous=normal", "given twice"),
        ("sqlite:///:memory:", "use memory://"),
        ("sqlite:///t.db#frag", "fragment"),
    ],
)
async def test_bad_urls_are_refused_with_what_to_do(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SQLiteBackend.from_url(url)
    with pytest.raises(ConfigurationError, match=message):
        connect(url)  # the scheme registry passes the error through unchanged


async def test_option_in_url_and_keyword_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="both in the URL and as a keyword"):
        SQLiteBackend.from_url("sqlite:///t.db?busy_timeout=1", busy_timeout=2)


async def test_engine_from_url_picks_sqlite(tmp_path: Path) -> None:
    engine = Engine.from_url(f"sqlite:///{tmp_path / 'e.db'}")
    assert isinstance(engine.store, SQLiteBackend)
    assert engine.store.path == str(tmp_path / "e.db")


# -- unusable files -----------------------------------------------------------------------


async def test_missing_directory_names_the_path_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "t.db"
    b = SQLiteBackend(path)
    with pytest.raises(ConfigurationError, match=rf"{path}.*{tmp_path / 'nowhere'} does not exist.*mkdir"):
        await b.open()
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(BackendNotOpenError, match=r"t\.db\) backend is not open"):
        await b.get("x")


async def test_directory_as_database_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"is a directory; name a file inside it"):
        await SQLiteBackend(tmp_path).open()


async def test_path_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError, match=r"directory .*file is not a directory"):
        await SQLiteBackend(tmp_path / "file" / "t.db").open()


async def test_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database" * 100)
    with pytest.raises(ConfigurationError, match=rf"cannot use the SQLite database {path}.*new file"):
        await SQLiteBackend(path).open()
    assert path.read_bytes() == b"these are my notes, not a database" * 100


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
async def test_unwritable_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    async with SQLiteBackend(path):
        pass
    path.chmod(0o444)
    try:
        with pytest.raises(ConfigurationError, match=rf"{path}.*cannot read and write"):
            await SQLiteBackend(path).open()
    finally:
        path.chmod(0o644)


async def test_newer_schema_is_refused_and_the_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    async with SQLiteBackend(path) as b:
        await b.create(task())
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(ConfigurationError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade salvador"):
        await SQLiteBackend(path).open()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert raw.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1
    raw.close()


async def test_someone_elses_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE tasks (title TEXT)")
    raw.commit()
    raw.close()
    with pytest.raises(ConfigurationError, match=r"1 table.*no salvador schema version.*its own file"):
        await SQLiteBackend(path).open()


async def test_too_old_sqlite_is_refused_with_the_version_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    with pytest.raises(ConfigurationError, match=r"needs SQLite 3\.35\.0 or newer.*RETURNING"):
        await SQLiteBackend(tmp_path / "t.db").open()


# -- the file -----------------------------------------------------------------------------


async def test_database_is_in_wal_mode_with_the_chosen_synchronous(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with SQLiteBackend.from_url(f"sqlite:///{path}?synchronous=full") as b:
        assert await b._run(lambda: b._db().execute("PRAGMA synchronous").fetchone()[0]) == 2
        raw = sqlite3.connect(path)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        raw.close()


async def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with SQLiteBackend(path) as first:
        leased = await first.submit(task(body=b"leased"))
        waiting = await first.submit(task(body=b"waiting"))
        claim = await first.claim("wf", lease=60, wait=0)
        assert claim is not None
        assert claim.task_id == leased.id
        running = await first.update(leased.evolve(status=TaskStatus.RUNNING, step=1), 1)
    async with SQLiteBackend(path) as second:
        assert await second.get(leased.id) == running
        # The lease taken before closing still holds: only the other task is claimable.
        again = await second.claim("wf", lease=60, wait=0)
        assert again is not None
        assert again.task_id == waiting.id
        assert await second.claim("wf", lease=60, wait=0) is None
        await second.extend(claim, lease=60)  # the old process's claim is still current
        await second.settle(running.evolve(status=TaskStatus.COMPLETED), running.version, claim)
    async with SQLiteBackend(path) as third:
        done = await third.get(leased.id)
        assert done is not None
        assert done.status is TaskStatus.COMPLETED
        page = await third.list(status=TaskStatus.COMPLETED)
        assert [t.id for t in page.tasks] == [leased.id]


async def test_closed_backend_says_so(tmp_path: Path) -> None:
    b = SQLiteBackend(tmp_path / "t.db")
    with pytest.raises(BackendNotOpenError, match=r"t\.db\) backend is not open"):
        await b.create(task())
    await b.open()
    await b.open()
    await b.close()
    await b.close()
    with pytest.raises(BackendNotOpenError, match="not open"):
        await b.claim("wf", lease=1, wait=0)


# -- the hot path -------------------------------------------------------------------------


async def test_each_transition_of_a_task_is_one_statement(backend: SQLiteBackend) -> None:
    """submit, claim, checkpoint and settle each cost exactly one SQL statement, hence one
    transaction; a regression here costs throughput on every task."""
    statements: list[str] = []
    await backend._run(lambda: backend._db().set_trace_callback(statements.append))

    async def count(coro: Any) -> Any:
        statements.clear()
        result = await coro
        # The triggers that keep task_counts run inside the statement; Python traces each
        # trigger program it runs again, with the statement's own text.
        assert len(set(statements)) == 1, statements
        return result

    stored = await count(backend.submit(task()))
    claim = await count(backend.claim("wf", lease=30, wait=0))
    assert claim.task == stored  # the claim carries the record: no second read
    running = await count(backend.update(stored.evolve(status=TaskStatus.RUNNING), 1))
    checkpoint = await count(backend.update(running.evolve(step=1, results={"a": 1}), 2))
    await count(backend.extend(claim, lease=30))
    await count(backend.settle(checkpoint.evolve(status=TaskStatus.COMPLETED), 3, claim))


async def test_concurrent_writes_share_commits_yet_each_stays_atomic(backend: SQLiteBackend) -> None:
    """Writes queued up together are committed as a group; a conflict or a duplicate in the
    group fails (or dedups) alone and the others land."""
    tasks = [await backend.create(task()) for _ in range(40)]
    statements: list[str] = []
    await backend._run(lambda: backend._db().set_trace_callback(statements.append))
    outcomes = await asyncio.gather(
        *[backend.update(t.evolve(step=1), 1 if i % 4 else 7) for i, t in enumerate(tasks)],
        *[backend.submit(task(idempotency_key="same")) for _ in range(10)],
        return_exceptions=True,
    )
    await backend._run(lambda: backend._db().set_trace_callback(None))
    updates, submits = outcomes[:40], outcomes[40:]
    for i, (before, outcome) in enumerate(zip(tasks, updates, strict=True)):
        stored = await backend.get(before.id)
        assert stored is not None
        if i % 4:
            assert outcome == stored
            assert stored.version == 2
        else:
            assert isinstance(outcome, ConflictError)
            assert stored == before
    assert len({t.id for t in submits if isinstance(t, Task)}) == 1
    assert len((await backend.list(limit=100)).tasks) == 41
    groups = statements.count("BEGIN IMMEDIATE")
    assert 1 <= groups < 25, f"50 writes should share a few commits, took {groups} groups"
    assert "SAVEPOINT salvador" in statements, "the duplicates were not resolved inside a group"


# -- split store and queue ----------------------------------------------------------------


async def test_as_a_queue_beside_another_store(backend: SQLiteBackend) -> None:
    """Split URLs: records live elsewhere, SQLite only delivers ids."""
    wf = Workflow("split")

    @wf.step()
    def only(ctx: StepContext) -> str:
        return str(ctx.json()["say"])

    async with Engine(MemoryBackend(), backend, workflows=[wf], poll_interval=0.05) as engine:
        task_id = await engine.submit("split", {"say": "hi"})
        assert await backend.get(task_id) is None  # a queue entry is not a record
        assert (await backend.list()).tasks == []
        worker = asyncio.create_task(engine.run(handle_signals=False))
        try:
            for _ in range(500):
                done = await engine.get_task(task_id)
                if done is not None and done.status is TaskStatus.COMPLETED:
                    break
                await asyncio.sleep(0.01)
        finally:
            engine.stop()
            await worker
    assert done is not None
    assert done.results == {"only": "hi"}
    async with SQLiteBackend(backend.path) as reopened:
        rows = await reopened._run(lambda: reopened._db().execute("SELECT count(*) FROM tasks").fetchone())
    assert rows == (0,), "the acked queue entry was left behind"


async def test_record_created_after_its_queue_entry_fills_it(backend: SQLiteBackend) -> None:
    early = task()
    await backend.enqueue("wf", early.id)
    stored = await backend.create(early)
    assert stored.id == early.id
    assert stored.version == 1
    assert await backend.get(early.id) == stored
    claim = await backend.claim("wf", lease=5, wait=0)
    assert claim is not None
    assert claim.task == stored


# -- several processes --------------------------------------------------------------------

_CLAIMER = """
import asyncio, json, os, sys
from pathlib import Path
from salvador_core.backends.sqlite import SQLiteBackend

async def main():
    got = []
    async with SQLiteBackend(sys.argv[1]) as b:
        ready, go = Path(sys.argv[2]) / f"ready-{os.getpid()}", Path(sys.argv[2]) / "go"
        ready.touch()
        while not go.exists():  # all claimers start together, so they race for every task
            await asyncio.sleep(0.005)
        while True:
            claim = await b.claim("wf", lease=60, wait=0.5)
            if claim is None:
                break
            await b.ack(claim)
            got.append([claim.task_id, claim.deliveries])
    print(json.dumps(got))

asyncio.run(main())
"""

_SUBMITTER = """
import asyncio, json, sys
from salvador_core.backends.sqlite import SQLiteBackend
from salvador_core.task import Task, new_task_id

async def main():
    async with SQLiteBackend(sys.argv[1]) as b:
        ids = []
        for key in range(int(sys.argv[2])):
            t = Task(id=new_task_id(), workflow="wf", idempotency_key=f"key-{key}")
            ids.append((await b.submit(t)).id)
    print(json.dumps(ids))

asyncio.run(main())
"""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def spawn(procs: list[subprocess.Popen[str]], script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    procs.append(proc)
    return proc


def start_together(directory: Path, count: int) -> None:
    """Wait until `count` claimer processes are ready, then let them all go at once."""
    deadline = time.monotonic() + 30
    while len(list(directory.glob("ready-*"))) < count:
        assert time.monotonic() < deadline, "claimer processes did not start"
        time.sleep(0.01)
    (directory / "go").touch()


async def output_of(proc: subprocess.Popen[str]) -> Any:
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)


async def test_processes_claiming_from_one_file_never_share_a_task(
    backend: SQLiteBackend, processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    ids = {(await backend.submit(task())).id for _ in range(600)}
    claimers = [spawn(processes, _CLAIMER, backend.path, str(tmp_path)) for _ in range(4)]
    await asyncio.to_thread(start_together, tmp_path, len(claimers))
    results = [await output_of(p) for p in claimers]
    delivered = Counter(task_id for got in results for task_id, _ in got)
    assert set(delivered) == ids
    assert max(delivered.values()) == 1, "a task was delivered twice"
    assert {deliveries for got in results for _, deliveries in got} == {1}
    assert sum(1 for got in results if got) >= 2, "the work should have been shared"


async def test_concurrent_duplicate_submits_from_processes_store_one_task_per_key(
    backend: SQLiteBackend, processes: list[subprocess.Popen[str]]
) -> None:
    submitters = [spawn(processes, _SUBMITTER, backend.path, "100") for _ in range(4)]
    results = [await output_of(p) for p in submitters]
    assert all(r == results[0] for r in results), "processes disagree on which task a key names"
    page = await backend.list(limit=1000)
    assert sorted(t.id for t in page.tasks) == sorted(results[0])
    assert len(page.tasks) == 100
    claims = []
    while (claim := await backend.claim("wf", lease=60, wait=0)) is not None:
        claims.append(claim.task_id)
    assert sorted(claims) == sorted(results[0]), "each key's task is queued exactly once"


async def test_waiting_claimer_wakes_for_a_submit_from_another_process(
    backend: SQLiteBackend, processes: list[subprocess.Popen[str]]
) -> None:
    started = time.monotonic()
    waiting = asyncio.create_task(backend.claim("wf", lease=30, wait=30))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    submitted = await output_of(spawn(processes, _SUBMITTER, backend.path, "1"))
    claim = await asyncio.wait_for(waiting, 30)
    assert claim is not None
    assert claim.task_id == submitted[0]
    # Far below the 30 s wait: it was woken, not timed out (the check runs every 50 ms).
    assert time.monotonic() - started < 15


async def test_idle_claimer_does_not_spin_while_other_processes_commit(backend: SQLiteBackend) -> None:
    """Commits by another connection wake a waiting claimer at most once per watch interval."""
    await backend.create(task())
    stop = threading.Event()

    def busy_neighbour() -> None:
        raw = sqlite3.connect(backend.path, isolation_level=None)
        while not stop.is_set():
            raw.execute("UPDATE tasks SET updated_at = updated_at + 1")
            time.sleep(0.001)  # hundreds of commits a second, leaving room for other writers
        raw.close()

    neighbour = threading.Thread(target=busy_neighbour)
    statements: list[str] = []
    await backend._run(lambda: backend._db().set_trace_callback(statements.append))
    neighbour.start()
    try:
        assert await backend.claim("idle", lease=5, wait=1.0) is None
    finally:
        stop.set()
        await asyncio.to_thread(neighbour.join)
    looks = sum(1 for s in statements if s.startswith("UPDATE tasks SET q_receipt"))
    assert 2 <= looks <= 1.0 / backend.watch_interval + 5, f"{looks} claim attempts in 1 s"


# -- locks --------------------------------------------------------------------------------


def hold_write_lock(path: str, seconds: float, locked: threading.Event) -> None:
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("UPDATE tasks SET updated_at = updated_at")
    locked.set()
    time.sleep(seconds)
    raw.execute("COMMIT")
    raw.close()


async def ticks_while(coro: Any) -> tuple[Any, int]:
    """Run `coro` and count 10 ms ticks of the event loop meanwhile (0 = loop blocked)."""
    ticks = 0
    finished = False

    async def ticker() -> None:
        nonlocal ticks
        while not finished:
            await asyncio.sleep(0.01)
            ticks += 1

    counting = asyncio.create_task(ticker())
    try:
        return await coro, ticks
    finally:
        finished = True
        await counting


async def test_writer_waits_for_another_process_lock_without_blocking_the_loop(
    backend: SQLiteBackend,
) -> None:
    locked = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(backend.path, 0.5, locked))
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 5)
        stored, ticks = await ticks_while(asyncio.gather(*[backend.submit(task()) for _ in range(5)]))
    finally:
        await asyncio.to_thread(holder.join)
    for one in stored:
        assert await backend.get(one.id) == one
    assert ticks >= 10, "the event loop was blocked while SQLite waited for the lock"


async def test_lock_held_past_busy_timeout_is_a_clear_unavailable_error(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    async with SQLiteBackend.from_url(f"sqlite:///{path}?busy_timeout=0.2") as b:
        kept = await b.create(task())
        locked = threading.Event()
        holder = threading.Thread(target=hold_write_lock, args=(path, 1.5, locked))
        holder.start()
        try:
            assert await asyncio.to_thread(locked.wait, 5)
            stuck = rf"{path} stayed locked.*busy_timeout \(0\.2s\)"
            with pytest.raises(BackendUnavailableError, match=stuck):
                await ticks_while(b.update(kept.evolve(step=1), 1))
            # Reads are not blocked by a writer in WAL mode.
            assert await b.get(kept.id) == kept
        finally:
            await asyncio.to_thread(holder.join)
        # Nothing was written by the failed update, and the backend works on.
        updated = await b.update(kept.evolve(step=1), 1)
        assert updated.version == 2
        with pytest.raises(ConflictError):
            await b.update(kept.evolve(step=2), 1)


# -- requeue voids the lease --------------------------------------------------------------


async def test_stale_ack_after_requeue_loses_its_lease_and_the_task_stays_queued(
    backend: SQLiteBackend,
) -> None:
    """The lost-task race: a delayed task is cancelled, a worker claims it when due, reads it
    as cancelled and is slow; `requeue` makes it pending again; the worker's ack from its
    stale claim must not remove the only queue entry of the now pending task."""
    submitted = await backend.submit(task(not_before=utcnow() + timedelta(seconds=0.2)))
    cancelled = await backend.update(submitted.evolve(status=TaskStatus.CANCELLED), 1)
    stale = await backend.claim("wf", lease=30, wait=5)
    assert stale is not None
    assert stale.task is not None
    assert stale.task.status is TaskStatus.CANCELLED
    requeued = await backend.requeue(cancelled.evolve(status=TaskStatus.PENDING), cancelled.version)
    with pytest.raises(LeaseLostError):
        await backend.ack(stale)
    with pytest.raises(LeaseLostError):
        await backend.extend(stale, lease=30)
    with pytest.raises(LeaseLostError):
        await backend.release(stale)
    with pytest.raises(ConflictError):  # the stale reader's final write is fenced out too
        await backend.settle(stale.task.evolve(step=1), stale.task.version, stale)
    fresh = await backend.claim("wf", lease=30, wait=0)
    assert fresh is not None, "the requeued task lost its queue entry"
    assert fresh.task == requeued
    await backend.settle(requeued.evolve(status=TaskStatus.COMPLETED), requeued.version, fresh)
    assert await backend.claim("wf", lease=30, wait=0) is None


async def test_settle_from_a_claim_older_than_requeue_keeps_the_new_queue_entry(
    backend: SQLiteBackend,
) -> None:
    """A settle whose version fence passes (nobody wrote since the requeue) writes its
    record but must leave the queue entry that the requeue made."""
    submitted = await backend.submit(task())
    stale = await backend.claim("wf", lease=30, wait=0)
    assert stale is not None
    requeued = await backend.requeue(submitted.evolve(status=TaskStatus.PENDING), 1)
    await backend.settle(requeued.evolve(status=TaskStatus.COMPLETED), requeued.version, stale)
    again = await backend.claim("wf", lease=30, wait=0)
    assert again is not None, "a stale settle removed the requeued task's queue entry"
    assert again.task_id == submitted.id
    assert again.deliveries == 1


async def test_task_cancelled_while_delayed_then_requeued_is_claimable_at_once(
    backend: SQLiteBackend,
) -> None:
    submitted = await backend.submit(task(not_before=utcnow() + timedelta(hours=1)))
    cancelled = await backend.update(submitted.evolve(status=TaskStatus.CANCELLED), 1)
    await backend.requeue(cancelled.evolve(status=TaskStatus.PENDING, not_before=None), cancelled.version)
    claim = await backend.claim("wf", lease=30, wait=0)
    assert claim is not None, "the requeued task still waits out its old delay"
    assert claim.task_id == submitted.id


async def test_requeue_with_not_before_holds_the_task_until_then(backend: SQLiteBackend) -> None:
    submitted = await backend.submit(task())
    leased = await backend.claim("wf", lease=30, wait=0)
    assert leased is not None
    later = utcnow() + timedelta(seconds=0.4)
    await backend.requeue(submitted.evolve(not_before=later), 1)
    assert await backend.claim("wf", lease=30, wait=0.1) is None
    claim = await backend.claim("wf", lease=30, wait=3)
    assert claim is not None
    assert utcnow() >= later


# -- clocks -------------------------------------------------------------------------------


async def set_lease_deadline(backend: SQLiteBackend, task_id: str, deadline: float) -> None:
    """Write a lease deadline as a wall-clock step would leave it (no clock is changed)."""
    sql = "UPDATE tasks SET q_due = ? WHERE id = ? AND q_receipt IS NOT NULL"
    assert await backend._run(backend._execute_sync, sql, (deadline, task_id)) == 1


async def test_lease_deadline_beyond_the_lease_granted_counts_as_expired(backend: SQLiteBackend) -> None:
    """A clock set back 30 s under a dead worker's 2 s lease leaves a deadline 32 s ahead;
    the task must not wait for it."""
    submitted = await backend.submit(task())
    dead = await backend.claim("wf", lease=2, wait=0)
    assert dead is not None
    await set_lease_deadline(backend, submitted.id, time.time() + 32)
    again = await backend.claim("wf", lease=2, wait=0)
    assert again is not None, "a lease stretched by a clock step back was still honoured"
    assert (again.task_id, again.deliveries) == (submitted.id, 2)
    with pytest.raises(LeaseLostError):
        await backend.ack(dead)


async def test_lease_within_its_length_and_delayed_tasks_are_not_taken_for_a_clock_step(
    backend: SQLiteBackend,
) -> None:
    leased = await backend.submit(task())
    await backend.submit(task(not_before=utcnow() + timedelta(hours=1)))
    claim = await backend.claim("wf", lease=30, wait=0)
    assert claim is not None
    assert claim.task_id == leased.id
    await set_lease_deadline(backend, leased.id, time.time() + 29.5)
    assert await backend.claim("wf", lease=30, wait=0) is None
    renewed = await backend.extend(claim, lease=300)  # a longer lease than the claim's
    assert await backend.claim("wf", lease=30, wait=0) is None, "an extended lease was taken"
    await backend.ack(claim)  # the receipt from before the extend still names the lease
    with pytest.raises(LeaseLostError):
        await backend.extend(renewed, lease=30)


async def test_claim_finds_due_tasks_and_stretched_leases_through_indexes(backend: SQLiteBackend) -> None:
    from salvador_core.backends.sqlite import _CLAIM

    params = {"receipt": "r", "deadline": 0.0, "workflow": "wf", "now": 0.0}
    plan = await backend._run(
        lambda: [row[3] for row in backend._db().execute("EXPLAIN QUERY PLAN " + _CLAIM, params)]
    )
    searches = [step for step in plan if step.startswith("SEARCH tasks")]
    assert any("INDEX tasks_queue (q_workflow=? AND q_due<?)" in step for step in searches), plan
    assert any("INDEX tasks_leases (q_workflow=?)" in step for step in searches), plan
    assert not any(step.startswith("SCAN") for step in plan), plan


# -- wake-ups across processes ------------------------------------------------------------


async def claim_wakes_within(claimer: SQLiteBackend, submitter: SQLiteBackend, seconds: float) -> None:
    """`claimer` waits; `submitter` (another backend object: its own wake-up socket, as in
    another process) submits; the claim must return within `seconds`."""
    waiting = asyncio.create_task(claimer.claim("wf", lease=30, wait=30))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    submitted = await submitter.submit(task())
    started = time.monotonic()
    claim = await asyncio.wait_for(waiting, 30)
    assert claim is not None
    assert claim.task_id == submitted.id
    assert time.monotonic() - started < seconds


async def test_wake_up_socket_wakes_a_claimer_without_polling(backend: SQLiteBackend) -> None:
    backend.safety_net_interval = backend.watch_interval = 60.0  # only a datagram wakes it in time
    async with SQLiteBackend(backend.path) as other:
        await claim_wakes_within(backend, other, 2.0)
    sockets = os.listdir(backend.path + "-wake")
    assert len(sockets) == 1, sockets  # the claimer's; the submitter never listened


async def test_wake_up_sockets_follow_the_database_permissions(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SQLiteBackend(path) as b:
        path.chmod(0o660)
        assert await b.claim("wf", lease=5, wait=0) is None
        directory = f"{path}-wake"
        assert os.stat(directory).st_mode & 0o777 == 0o770
        (name,) = os.listdir(directory)
        assert os.stat(os.path.join(directory, name)).st_mode & 0o777 == 0o620
    assert os.listdir(directory) == [], "close() left its socket behind"


async def test_wake_up_works_when_the_path_is_too_long_for_a_socket_address(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(deep / "t.db-wake" / "123456.abcdef")) > 108
    async with SQLiteBackend(deep / "t.db") as claimer, SQLiteBackend(deep / "t.db") as submitter:
        claimer.safety_net_interval = claimer.watch_interval = 60.0  # no polling either way
        await claim_wakes_within(claimer, submitter, 2.0)


async def test_without_a_wake_up_directory_claimers_poll_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.db"
    os.close(os.open(f"{path}-wake", os.O_CREAT | os.O_WRONLY))  # a file where the directory goes
    async with SQLiteBackend(path) as claimer, SQLiteBackend(path) as submitter:
        claimer.safety_net_interval = 60.0
        await claim_wakes_within(claimer, submitter, 2.0)  # by polling data_version
    assert f"no wake-up socket in {path}-wake" in caplog.text
    assert "polling every 0.05s" in caplog.text


_WAITER = """
import asyncio, sys
from salvador_core.backends.sqlite import SQLiteBackend

async def main():
    async with SQLiteBackend(sys.argv[1]) as b:
        print("waiting", flush=True)
        await b.claim("other", lease=5, wait=600)

asyncio.run(main())
"""


async def test_socket_left_by_a_killed_process_is_unlinked_by_the_next_sender(
    backend: SQLiteBackend, processes: list[subprocess.Popen[str]]
) -> None:
    victim = spawn(processes, _WAITER, backend.path)
    assert await asyncio.to_thread(victim.stdout.readline) == "waiting\n"  # type: ignore[union-attr]
    directory = Path(f"{backend.path}-wake")

    def victims_sockets() -> list[Path]:
        return list(directory.glob(f"{victim.pid}.*")) if directory.exists() else []

    deadline = time.monotonic() + 10
    while not victims_sockets():
        assert time.monotonic() < deadline, "the waiting process bound no socket"
        await asyncio.sleep(0.01)
    victim.kill()
    victim.wait(timeout=10)
    assert victims_sockets(), "SIGKILL should leave the socket file behind"
    backend.safety_net_interval = 60.0
    async with SQLiteBackend(backend.path) as other:
        await claim_wakes_within(backend, other, 2.0)
    assert not victims_sockets(), "the dead process's socket was not unlinked"


# -- the file deleted, replaced, read-only, immutable -------------------------------------


async def test_deleted_database_is_reported_and_refused(
    backend: SQLiteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    kept = await backend.submit(task())
    backend.identity_check_interval = 0.0
    for suffix in ("", "-wal", "-shm"):
        os.unlink(backend.path + suffix)
    for call in (backend.get(kept.id), backend.submit(task()), backend.claim("wf", lease=5, wait=0)):
        with pytest.raises(BackendUnavailableError, match=rf"{backend.path} was deleted .*restart"):
            await call
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "was deleted" in r.getMessage()]
    assert len(errors) == 1, "the loss should be logged once, loudly"


async def test_replaced_database_is_reported_and_refused(backend: SQLiteBackend) -> None:
    await backend.submit(task())
    backend.identity_check_interval = 0.0
    replacement = Path(backend.path + ".new")
    async with SQLiteBackend(replacement):
        pass
    os.replace(replacement, backend.path)
    with pytest.raises(BackendUnavailableError, match=rf"{backend.path} was replaced by another file"):
        await backend.claim("wf", lease=5, wait=0)


async def test_worker_keeps_logging_a_deleted_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wf = Workflow("wf")
    wf.step("only", lambda ctx: None)
    path = tmp_path / "t.db"
    async with Engine.from_url(f"sqlite:///{path}", workflows=[wf], poll_interval=0.1) as engine:
        assert isinstance(engine.store, SQLiteBackend)
        engine.store.identity_check_interval = 0.05
        worker = asyncio.create_task(engine.run(handle_signals=False))
        await asyncio.sleep(0.3)
        path.unlink()
        try:
            deadline = time.monotonic() + 10
            while "claiming 'wf' failed" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                await asyncio.sleep(0.05)
        finally:
            engine.stop()
            await worker
    assert f"{path} was deleted" in caplog.text


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    """A private tmpfs under tmp_path (needs root and mount(2); skipped elsewhere)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("needs root and the right to mount a tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


async def test_read_only_filesystem_is_named_as_such_even_for_root(small_mount: Path) -> None:
    path = small_mount / "t.db"
    async with SQLiteBackend(path) as b:
        await b.submit(task())
    await asyncio.to_thread(subprocess.run, ["mount", "-o", "remount,ro", str(small_mount)], check=True)
    read_only = rf"read-only filesystem \(EROFS; mounted at {small_mount}\).*remount,rw"
    with pytest.raises(ConfigurationError, match=read_only):
        await SQLiteBackend(path).open()


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="chattr +i needs Linux and root")
async def test_immutable_wal_file_is_named_as_such(backend: SQLiteBackend) -> None:
    await backend.submit(task())
    wal = backend.path + "-wal"
    flagged = await asyncio.to_thread(subprocess.run, ["chattr", "+i", wal], capture_output=True)
    if flagged.returncode:
        pytest.skip("this filesystem has no immutable flag")
    try:
        with pytest.raises(BackendUnavailableError, match=rf"{wal} became immutable \(chattr \+i\)"):
            await backend.submit(task())
    finally:
        await asyncio.to_thread(subprocess.run, ["chattr", "-i", wal], check=True)
