"""The PostgreSQL backend beyond the conformance suite: URLs and options, errors, schema
versions and migrations, waiting on LISTEN (and without it), and purge in batches.

Every test uses its own schema on the shared server (dropped afterwards); nothing here
stops or reconfigures the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from salvador_core import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    Engine,
    LeaseLostError,
    TaskStatus,
    Workflow,
)
from salvador_core.config import connect
from salvador_core.task import Claim, Task, new_task_id, utcnow
from salvador_postgres import SCHEMA_VERSION, PostgresBackend
from salvador_postgres import schema as migrations
from tests.helpers.postgres_servers import free_port, with_options

pytestmark = pytest.mark.asyncio


def task(workflow: str = "wf", **fields: object) -> Task:
    return Task(id=new_task_id(), workflow=workflow, **fields)  # type: ignore[arg-type]


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def server_conn(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url.split("?", 1)[0])


# -- URLs, options and errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://h/db?colour=blue", "unknown option(s) ['colour']"),
        ("postgresql://h/db?pool_size=0", "pool_size must be at least 1"),
        ("postgresql://h/db?pool_size=ten", "pool_size must be a whole number"),
        ("postgresql://h/db?sslmode=sometimes", "sslmode must be one of"),
        ("postgresql://h/db?schema=pg_mine", "reserves"),
        ("postgresql://h/db?schema=" + "s" * 64, "1 to 63 bytes"),
        ("postgresql://h/db?listen=maybe", "listen must be true or false"),
        ("postgresql://h/db?migrate=perhaps", "migrate must be true or false"),
        ("postgresql://h/db?poll_interval=0", "poll_interval must be a number of seconds above 0"),
        ("postgresql://h/db?connect_timeout=soon", "connect_timeout must be a number of seconds"),
        ("postgresql://h/db?schema=a&schema=b", "given twice"),
        ("postgresql://h/db/extra", "one database name"),
        ("postgresql://h:notaport/db", "expected postgresql://"),
        ("postgresql://h/db#frag", "#fragment"),
    ],
)
async def test_bad_urls_are_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        PostgresBackend.from_url(url)
    assert problem in str(refused.value)


async def test_both_schemes_resolve_to_the_backend_through_entry_points() -> None:
    for scheme in ("postgresql", "postgres"):
        backend = connect(f"{scheme}://u@127.0.0.1/db?schema=x")
        assert isinstance(backend, PostgresBackend)
        assert backend.schema == "x"


async def test_an_option_given_in_the_url_and_as_a_keyword_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="both in the URL and as a keyword"):
        PostgresBackend.from_url("postgresql://h/db?schema=a", schema="b")


async def test_password_never_shows_in_repr_or_errors() -> None:
    port = free_port()
    url = f"postgresql://app:hunter2@127.0.0.1:{port}/db?connect_timeout=2"
    backend = PostgresBackend.from_url(url)
    assert "hunter2" not in repr(backend)
    assert "hunter2" not in repr(backend.settings)
    with pytest.raises(BackendUnavailableError) as failure:
        await backend.open()
    message = str(failure.value)
    assert "hunter2" not in message
    assert f"app:***@127.0.0.1:{port}" in message
    with pytest.raises(ConfigurationError) as bad:
        PostgresBackend.from_url(f"postgresql://app:hunter2@127.0.0.1:{port}/db?nope=1")
    assert "hunter2" not in str(bad.value)


async def test_a_missing_database_is_a_configuration_error(postgres_url: str) -> None:
    url = postgres_url.rsplit("/", 1)[0] + "/no_such_database_here"
    with pytest.raises(ConfigurationError, match="database"):
        await PostgresBackend.from_url(url).open()


async def test_using_a_backend_before_open_says_so(pg_url: str) -> None:
    from salvador_core.errors import BackendNotOpenError

    with pytest.raises(BackendNotOpenError):
        await PostgresBackend.from_url(pg_url).get("x")


async def test_options_reach_the_server(pg_url: str, pg_schema: str) -> None:
    url = with_options(pg_url, application_name="orders-worker", pool_size="3", sslmode="disable")
    async with PostgresBackend.from_url(url) as backend:
        await backend.submit(task())
        conn = await server_conn(pg_url)
        try:
            names = await conn.fetch(
                "SELECT application_name FROM pg_stat_activity WHERE application_name = 'orders-worker'"
            )
            schema = await conn.fetchval("SELECT nspname FROM pg_namespace WHERE nspname = $1", pg_schema)
        finally:
            await conn.close()
        assert names, "application_name did not reach the server"
        assert schema == pg_schema
        assert backend._pool.get_max_size() == 3


# -- schema versions and migrations --------------------------------------------------------


async def test_concurrent_migrations_apply_each_file_once(pg_url: str, pg_schema: str) -> None:
    backends = [PostgresBackend.from_url(with_options(pg_url, migrate="false")) for _ in range(6)]
    applied = await asyncio.gather(*(b.migrate() for b in backends))
    assert sorted(v for versions in applied for v in versions) == list(range(1, SCHEMA_VERSION + 1))
    conn = await server_conn(pg_url)
    try:
        rows = await conn.fetch(f'SELECT version FROM "{pg_schema}".schema_migrations ORDER BY version')
    finally:
        await conn.close()
    assert [r["version"] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    async with backends[0]:
        await backends[0].submit(task())


async def test_a_schema_newer_than_the_code_is_refused(pg_url: str, pg_schema: str) -> None:
    async with PostgresBackend.from_url(pg_url):
        pass
    conn = await server_conn(pg_url)
    try:
        await conn.execute(
            f'INSERT INTO "{pg_schema}".schema_migrations (version, name) VALUES ($1, $2)',
            SCHEMA_VERSION + 1,
            "from-the-future",
        )
    finally:
        await conn.close()
    for options in ({}, {"migrate": "true"}):
        with pytest.raises(ConfigurationError, match=r"newer than this salvador understands"):
            await PostgresBackend.from_url(with_options(pg_url, **options)).open()


async def test_an_older_schema_is_told_to_run_migrate_and_then_works(pg_url: str, pg_schema: str) -> None:
    conn = await server_conn(pg_url)
    try:
        assert await migrations.migrate(conn, pg_schema, "test", target=1) == [1]
    finally:
        await conn.close()
    backend = PostgresBackend.from_url(pg_url)
    with pytest.raises(ConfigurationError, match=r"is at version 1.*await backend\.migrate\(\)"):
        await backend.open()
    assert await backend.migrate() == list(range(2, SCHEMA_VERSION + 1))
    async with backend:
        await backend.submit(task())


async def test_migrate_true_upgrades_an_older_schema_on_open(pg_url: str, pg_schema: str) -> None:
    conn = await server_conn(pg_url)
    try:
        await migrations.migrate(conn, pg_schema, "test", target=1)
        async with PostgresBackend.from_url(with_options(pg_url, migrate="true")):
            pass
        assert await migrations.current_version(conn, pg_schema) == SCHEMA_VERSION
    finally:
        await conn.close()


async def test_migrate_false_never_creates_anything(pg_url: str, pg_schema: str) -> None:
    with pytest.raises(ConfigurationError, match="does not exist yet"):
        await PostgresBackend.from_url(with_options(pg_url, migrate="false")).open()
    conn = await server_conn(pg_url)
    try:
        assert await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", pg_schema) is None
    finally:
        await conn.close()


async def test_dropped_tables_are_a_configuration_error_not_a_driver_error(
    pg_url: str, pg_schema: str
) -> None:
    async with PostgresBackend.from_url(pg_url) as backend:
        conn = await server_conn(pg_url)
        try:
            await conn.execute(f'DROP TABLE "{pg_schema}".tasks')
        finally:
            await conn.close()
        with pytest.raises(ConfigurationError, match="run the migrations again"):
            await backend.get("x")


# -- waiting ---------------------------------------------------------------------------------


async def test_claim_waiting_on_listen_wakes_on_another_instances_submit(pg_url: str) -> None:
    async with PostgresBackend.from_url(pg_url) as waiter, PostgresBackend.from_url(pg_url) as producer:
        await waiter.claim("wf", lease=5, wait=0.01)  # starts the listener
        claiming = asyncio.create_task(waiter.claim("wf", lease=5, wait=10))
        await asyncio.sleep(0.2)
        submitted = await producer.submit(task())
        began = time.monotonic()
        claim = await asyncio.wait_for(claiming, 5)
        woke_after = time.monotonic() - began
    assert claim is not None
    assert claim.task_id == submitted.id
    print(f"\ncross-instance wake-up on NOTIFY: {woke_after * 1000:.1f} ms")
    assert woke_after < 1.0


async def test_claim_wakes_at_a_delayed_tasks_due_time_without_polling(pg_url: str) -> None:
    async with PostgresBackend.from_url(pg_url) as waiter, PostgresBackend.from_url(pg_url) as producer:
        await waiter.claim("wf", lease=5, wait=0.01)
        due = utcnow() + timedelta(seconds=0.4)
        delayed = await producer.submit(task(not_before=due))
        began = time.monotonic()
        claim = await waiter.claim("wf", lease=5, wait=5)
        waited = time.monotonic() - began
    assert claim is not None
    assert claim.task_id == delayed.id
    assert 0.2 < waited < 1.5, waited


async def test_without_listen_claimers_poll_and_still_get_other_instances_tasks(pg_url: str) -> None:
    """PgBouncer transaction mode: no LISTEN, no prepared statements; polling every
    poll_interval instead."""
    url = with_options(pg_url, listen="false", statement_cache_size="0", poll_interval="0.1")
    async with PostgresBackend.from_url(url) as waiter, PostgresBackend.from_url(url) as producer:
        claiming = asyncio.create_task(waiter.claim("wf", lease=5, wait=5))
        await asyncio.sleep(0.3)
        submitted = await producer.submit(task())
        began = time.monotonic()
        claim = await asyncio.wait_for(claiming, 5)
        waited = time.monotonic() - began
        assert waiter._listener is None
    assert claim is not None
    assert claim.task_id == submitted.id
    assert waited < 0.6, waited


async def test_lost_listener_falls_back_to_polling_logs_once_and_reconnects(
    pg_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first reconnection attempt comes 2 s after a loss: the claims below happen
    # while the listener is down, so only polling can deliver them in time.
    monkeypatch.setattr("salvador_postgres.listener._FIRST_PAUSE", 2.0)
    url = with_options(pg_url, poll_interval="0.1")
    caplog.set_level(logging.INFO, logger="salvador.postgres")
    async with PostgresBackend.from_url(url) as waiter, PostgresBackend.from_url(url) as producer:
        await waiter.claim("wf", lease=5, wait=0.01)
        listener = waiter._listener
        assert listener is not None
        assert listener.listening
        conn = await server_conn(pg_url)
        try:
            for _ in range(2):
                pid = listener.backend_pid
                claiming = asyncio.create_task(waiter.claim("wf", lease=5, wait=5))
                await asyncio.sleep(0.05)
                assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
                await wait_until(lambda: not listener.listening)
                await asyncio.sleep(0.2)  # the claimer is back to waiting, now by polling
                submitted = await producer.submit(task())
                began = time.monotonic()
                claim = await asyncio.wait_for(claiming, 5)
                assert time.monotonic() - began < 1.0, "no fallback to polling"
                assert not listener.listening
                assert claim is not None
                assert claim.task_id == submitted.id
                await waiter.ack(claim)
                deadline = time.monotonic() + 10
                while not (listener.listening and listener.backend_pid != pid):
                    assert time.monotonic() < deadline, "the listener did not reconnect"
                    await asyncio.sleep(0.05)
        finally:
            await conn.close()
        # Back on notifications: a claim waiting far longer than poll_interval wakes at once.
        claiming = asyncio.create_task(waiter.claim("wf", lease=5, wait=10))
        await asyncio.sleep(0.1)
        await producer.submit(task())
        began = time.monotonic()
        assert await asyncio.wait_for(claiming, 5) is not None
        assert time.monotonic() - began < 1.0
    lost = [r for r in caplog.records if "LISTEN connection is lost" in r.getMessage()]
    back = [r for r in caplog.records if "LISTEN connection is back" in r.getMessage()]
    assert len(lost) == 2, [r.getMessage() for r in caplog.records]  # once per loss
    assert len(back) == 2
    assert all(r.levelno == logging.WARNING for r in lost)
    assert listener.losses == 2


async def test_an_idle_engine_starts_a_task_long_before_its_poll_interval(pg_url: str) -> None:
    wf = Workflow("quick")
    started: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    @wf.step()
    async def only(ctx: object) -> None:
        if not started.done():
            started.set_result(time.monotonic())

    async with Engine.from_url(pg_url, workflows=[wf], poll_interval=30.0) as engine:
        worker = asyncio.create_task(engine.run(handle_signals=False))
        await asyncio.sleep(0.3)
        began = time.monotonic()
        await engine.submit("quick", {})
        ran_at = await asyncio.wait_for(started, 5)
        engine.stop()
        await asyncio.wait_for(worker, 10)
    assert ran_at - began < 1.0


# -- retention ------------------------------------------------------------------------------


async def test_purge_deletes_in_batches_only_what_is_finished_and_old(pg_url: str) -> None:
    async with PostgresBackend.from_url(pg_url) as backend:
        old = [task(status=TaskStatus.COMPLETED) for _ in range(2300)]
        for start in range(0, len(old), 250):
            await asyncio.gather(*(backend.create(t) for t in old[start : start + 250]))
        cutoff = utcnow()
        await asyncio.sleep(0.01)
        recent = await backend.create(task(status=TaskStatus.COMPLETED))
        pending = await backend.submit(task())
        failed = await backend.create(task(status=TaskStatus.FAILED))
        deleted = await backend.purge(older_than=cutoff, statuses=[TaskStatus.COMPLETED])
        assert deleted == 2300
        for kept in (recent, pending, failed):
            assert await backend.get(kept.id) is not None
        assert await backend.get(old[0].id) is None
        with pytest.raises(ValueError, match="not terminal"):
            await backend.purge(older_than=utcnow(), statuses=[TaskStatus.PENDING])


# -- round trips: batch claims and grouped writes ----------------------------------------------


class Sent:
    """The statements a backend sends from now on, counted through its pool (each is one
    round trip and, outside a transaction, one commit)."""

    def __init__(self, backend: PostgresBackend) -> None:
        self.statements: list[str] = []
        db = backend._db()
        for name in ("fetch", "fetchrow", "fetchval", "execute"):
            setattr(db, name, self._counted(getattr(db, name)))

    def _counted(self, send: Callable[..., Any]) -> Callable[..., Any]:
        async def counted(sql: str, *args: Any) -> Any:
            self.statements.append(sql)
            return await send(sql, *args)

        return counted


async def claimed(backend: PostgresBackend, n: int) -> list[tuple[Task, Claim]]:
    tasks = [await backend.submit(task()) for _ in range(n)]
    claims = await backend.claim_many("wf", n, lease=30, wait=1)
    assert [c.task_id for c in claims] == [t.id for t in tasks]
    return list(zip(tasks, claims, strict=True))


async def test_claim_many_leases_a_batch_in_one_statement(pg_url: str) -> None:
    async with PostgresBackend.from_url(pg_url) as backend:
        tasks = [await backend.submit(task()) for _ in range(30)]
        sent = Sent(backend)
        claims = await backend.claim_many("wf", 25, lease=30, wait=1)
        assert len(sent.statements) == 1
        assert [c.task_id for c in claims] == [t.id for t in tasks[:25]]
        assert all(c.task is not None and c.task.version == 1 for c in claims), "records come with the claims"


async def test_checkpoints_issued_together_share_one_statement_and_each_hears_its_own_outcome(
    pg_url: str,
) -> None:
    async with PostgresBackend.from_url(pg_url) as backend:
        held = await claimed(backend, 5)
        stale = held[2][0]
        await backend.update(stale.evolve(step=1), 1)  # another writer got there first
        sent = Sent(backend)
        outcomes = await asyncio.gather(
            *(backend.update(t.evolve(status=TaskStatus.RUNNING, attempt=1), 1) for t, _ in held),
            return_exceptions=True,
        )
        assert len(sent.statements) == 1, "5 checkpoints issued in one turn were not grouped"
        conflict = outcomes[2]
        assert isinstance(conflict, ConflictError), outcomes
        assert (conflict.expected_version, conflict.actual_version) == (1, 2)
        for (t, _), outcome in zip(held, outcomes, strict=True):
            if t.id == stale.id:
                continue
            assert isinstance(outcome, Task), outcome
            assert outcome.version == 2
            stored = await backend.get(t.id)
            assert stored is not None
            assert (stored.status, stored.version) == (TaskStatus.RUNNING, 2)
        kept = await backend.get(stale.id)
        assert kept is not None
        assert (kept.status, kept.step) == (TaskStatus.PENDING, 1), "a failed fence wrote"


async def test_settles_issued_together_are_each_fenced_by_version_and_lease(pg_url: str) -> None:
    async with PostgresBackend.from_url(pg_url) as backend:
        (done, done_claim), (stale, stale_claim), (lost, lost_claim) = await claimed(backend, 3)
        await backend.update(stale.evolve(step=1), 1)
        expire = f"UPDATE {backend._sql.table} SET q_due = clock_timestamp() - interval '1 ms' WHERE id = $1"
        await backend._db().execute(expire, lost.id)
        new_claim = await backend.claim("wf", lease=30, wait=1)
        assert new_claim is not None
        assert new_claim.task_id == lost.id
        sent = Sent(backend)
        outcomes = await asyncio.gather(
            backend.settle(done.evolve(status=TaskStatus.COMPLETED), 1, done_claim),
            backend.settle(stale.evolve(status=TaskStatus.COMPLETED), 1, stale_claim),
            backend.settle(lost.evolve(status=TaskStatus.COMPLETED), 1, lost_claim),
            return_exceptions=True,
        )
        assert len(sent.statements) == 1, "3 settles issued in one turn were not grouped"
        assert [type(o) for o in outcomes] == [Task, ConflictError, Task], outcomes
        await backend.extend(stale_claim, lease=30)  # a failed fence acked nothing
        await backend.ack(new_claim)  # the lost lease's settle wrote but left the new lease
        with pytest.raises(LeaseLostError):
            await backend.ack(done_claim)  # settled and acked together
        completed, pending = TaskStatus.COMPLETED, TaskStatus.PENDING
        for task_id, status in ((done.id, completed), (lost.id, completed), (stale.id, pending)):
            stored = await backend.get(task_id)
            assert stored is not None
            assert stored.status is status


async def test_two_writes_of_one_task_in_one_turn_never_share_a_statement(pg_url: str) -> None:
    async with PostgresBackend.from_url(pg_url) as backend:
        ((t, _),) = await claimed(backend, 1)
        sent = Sent(backend)
        outcomes = await asyncio.gather(
            backend.update(t.evolve(step=1), 1), backend.update(t.evolve(step=2), 1), return_exceptions=True
        )
        assert len(sent.statements) == 2
        # Both statements are in flight at once; the one that waits for the other's row lock
        # fails its fence (the version it reports may be the one it started from).
        assert sorted(type(o).__name__ for o in outcomes) == ["ConflictError", "Task"], outcomes
        stored = await backend.get(t.id)
        assert stored is not None
        assert stored.version == 2


async def test_a_grouped_statement_that_fails_fails_every_caller_with_the_mapped_error(
    pg_url: str, pg_schema: str
) -> None:
    async with PostgresBackend.from_url(pg_url) as backend:
        held = await claimed(backend, 3)
        conn = await server_conn(pg_url)
        try:
            await conn.execute(f'DROP TABLE "{pg_schema}".tasks')
        finally:
            await conn.close()
        outcomes = await asyncio.gather(
            *(backend.update(t.evolve(step=1), 1) for t, _ in held), return_exceptions=True
        )
        assert all(isinstance(o, ConfigurationError) and "migrations" in str(o) for o in outcomes), outcomes


async def test_pooled_connections_are_not_reset_after_every_statement(pg_url: str) -> None:
    name = f"salvador-noreset-{new_task_id()[:8]}"
    async with PostgresBackend.from_url(with_options(pg_url, application_name=name)) as backend:
        await asyncio.gather(*(backend.get(new_task_id()) for _ in range(4)))
        conn = await server_conn(pg_url)
        try:
            last = [r["query"] for r in await conn.fetch(
                "SELECT query FROM pg_stat_activity WHERE application_name = $1", name
            )]
        finally:
            await conn.close()
    assert last, "no connection of the backend found in pg_stat_activity"
    assert not [q for q in last if "RESET ALL" in q], (
        f"a pooled connection's last statement was asyncpg's reset query ({last}): a second "
        "round trip for every statement"
    )


async def test_more_concurrent_statements_than_connections_all_complete(pg_url: str) -> None:
    async with PostgresBackend.from_url(with_options(pg_url, pool_size="2")) as backend:
        ids = [(await backend.submit(task())).id for _ in range(3)]
        found = await asyncio.wait_for(asyncio.gather(*(backend.get(ids[i % 3]) for i in range(40))), 10)
        assert all(t is not None for t in found)
        # Both connections are now kept between statements: a migration still gets one.
        assert await asyncio.wait_for(backend.migrate(), 10) == []
        assert await backend.get(ids[0]) is not None


async def test_submits_issued_together_share_one_statement_and_duplicates_are_resolved_alone(
    pg_url: str,
) -> None:
    async with PostgresBackend.from_url(pg_url) as backend:
        old = await backend.submit(task(idempotency_key="old"))
        sent = Sent(backend)
        fresh = [task(), task(), task(idempotency_key="same"), task(idempotency_key="same")]
        stored = await asyncio.gather(*(backend.submit(t) for t in [*fresh, task(idempotency_key="old")]))
        assert sent.statements[0] == backend._sql.insert_many
        assert sent.statements.count(backend._sql.insert_many) == 1, "5 submits in one turn were not grouped"
        assert stored[4].id == old.id, "a duplicate of an earlier task did not get the earlier task"
        winner = min(fresh[2].id, fresh[3].id)  # a group is sent in id order
        assert stored[2].id == stored[3].id == winner, "two submits of one key did not get one task"
        claims = await backend.claim_many("wf", 10, lease=30, wait=1)
        assert sorted(c.task_id for c in claims) == sorted([old.id, fresh[0].id, fresh[1].id, winner])


async def test_a_grouped_submit_wakes_waiting_claimers_of_every_workflow_in_it(pg_url: str) -> None:
    async with PostgresBackend.from_url(pg_url) as waiter, PostgresBackend.from_url(pg_url) as producer:
        waits = [asyncio.create_task(waiter.claim(name, lease=5, wait=8)) for name in ("a", "b")]
        await asyncio.sleep(0.3)  # both wait on LISTEN
        started = time.monotonic()
        submitted = await asyncio.gather(
            producer.submit(task("a")), producer.submit(task("b")), producer.submit(task("b"))
        )
        claims = await asyncio.wait_for(asyncio.gather(*waits), 6)
        assert time.monotonic() - started < 2, "a grouped submit woke no one: its NOTIFYs went missing"
        first_b = min(submitted[1].id, submitted[2].id)
        assert [c.task_id if c else None for c in claims] == [submitted[0].id, first_b]


async def test_kept_connections_terminated_by_the_server_are_replaced(pg_url: str) -> None:
    name = f"salvador-kept-{new_task_id()[:8]}"
    async with PostgresBackend.from_url(with_options(pg_url, application_name=name)) as backend:
        stored = await backend.submit(task())
        await asyncio.gather(*(backend.get(stored.id) for _ in range(4)))  # several kept
        conn = await server_conn(pg_url)
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                name,
            )
        finally:
            await conn.close()
        assert killed >= 1
        await asyncio.sleep(0.2)  # asyncpg notices the closed sockets
        found = await asyncio.gather(*(backend.get(stored.id) for _ in range(4)))
        assert [t.id if t else None for t in found] == [stored.id] * 4


async def test_cached_plans_of_batch_statements_never_scan_the_whole_table(
    pg_url: str, pg_schema: str
) -> None:
    """A prepared statement may run on PostgreSQL's generic plan, made without the
    parameters' values: it must find rows by index however deep the queue is (with the
    claim's limit a parameter, `LIMIT $4`, the plan was made for a tenth of the queue: a
    scan of the whole table where index lookups are priced high)."""
    async with PostgresBackend.from_url(pg_url) as backend:
        conn = await server_conn(pg_url)
        try:
            await conn.execute(
                f'INSERT INTO "{pg_schema}".tasks (id, workflow, record, status, version, updated_at, '
                "q_workflow, q_due) SELECT lpad(to_hex(g), 32, '0'), 'deep', '\\x7b7d', 'pending', 1, "
                "now(), 'deep', now() FROM generate_series(1, 50000) AS g"
            )
            await conn.execute(f'ANALYZE "{pg_schema}".tasks')
            # This session's planner only: generic plans. PREPARE and EXPLAIN EXECUTE show the
            # generic plan itself (an EXPLAIN prepared with parameters plans its statement for
            # the values it is given).
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            write = "('{a,b}', '{1,1}', '{\"\\\\x7b7d\",\"\\\\x7b7d\"}', '{x,x}', '{2,2}', '{%s,%s}')"
            now = utcnow().isoformat()
            plans = {
                "claim": (backend._sql.claim(64), "(text, text, float8, int)", "('deep', 'r', 30, 50)"),
                "update_many": (
                    backend._sql.update_many, "(text[], int[], bytea[], text[], int[], timestamptz[])",
                    write % (now, now),
                ),
                "settle_many": (
                    backend._sql.settle_many,
                    "(text[], int[], bytea[], text[], int[], timestamptz[], text[])",
                    write[:-1] % (now, now) + ", '{r,r}')",
                ),
            }
            for name, (sql, types, args) in plans.items():
                # The claim's limit, a literal, makes its plan an index scan even with index
                # lookups priced as on a cold disk (the plan of a queue of millions of records
                # at this depth); with `LIMIT $4` it was a scan of the whole table.
                await conn.execute(f"SET random_page_cost = {100 if name == 'claim' else 4}")
                await conn.execute(f"PREPARE checked{types} AS {sql}")
                try:
                    explained = await conn.fetch(f"EXPLAIN (COSTS OFF) EXECUTE checked{args}")
                finally:
                    await conn.execute("DEALLOCATE checked")
                plan = "\n".join(row[0] for row in explained)
                assert name != "claim" or "$1" in plan, f"not the generic plan of {name}:\n{plan}"
                assert "Seq Scan on tasks" not in plan, f"the generic plan of {name} scans the table:\n{plan}"
        finally:
            await conn.close()


async def test_listing_and_purging_are_planned_for_their_filters(pg_url: str, pg_schema: str) -> None:
    """Under a generic plan (which PostgreSQL may keep for a prepared statement after five
    runs), listing a rare status (10 rows among 1,000,000) walks the primary key and
    filters: 300 ms instead of 0.3 ms. Listing and purging run in a transaction of their
    own, planned for the statuses asked for."""
    async with PostgresBackend.from_url(pg_url) as backend:
        conn = await server_conn(pg_url)
        try:
            await conn.execute(
                f'INSERT INTO "{pg_schema}".tasks (id, workflow, record, status, version, updated_at) '
                "SELECT lpad(to_hex(g), 32, '0'), 'w', '\\x7b7d', "
                "CASE WHEN g % 10000 = 7 THEN 'failed' ELSE 'completed' END, 1, now() "
                "FROM generate_series(1, 50000) AS g"
            )
            await conn.execute(f'ANALYZE "{pg_schema}".tasks')
        finally:
            await conn.close()
        query = (
            f'SELECT id FROM "{pg_schema}".tasks WHERE record IS NOT NULL AND id > $1 '
            "AND status = ANY($2::text[]) ORDER BY id LIMIT $3"
        )

        async def plan(conn: Any) -> str:
            await conn.execute(f"PREPARE listing(text, text[], int) AS {query}")
            try:
                rows = await conn.fetch("EXPLAIN (COSTS OFF) EXECUTE listing('', '{failed}', 51)")
            finally:
                await conn.execute("DEALLOCATE listing")
            return "\n".join(row[0] for row in rows)

        async with backend._db().connection() as hot:
            # What PostgreSQL may settle on by itself after five runs of one statement.
            await hot.execute("SET plan_cache_mode = force_generic_plan")
            try:
                generic = await plan(hot)
            finally:
                await hot.execute("RESET plan_cache_mode")
        async with backend._planned_per_call() as planned:
            custom = await plan(planned)
        assert "tasks_status" in custom, custom
        # The hot path's connections would have walked the table: this is what is avoided.
        assert "tasks_status" not in generic, generic
