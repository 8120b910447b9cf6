"""What the Redis backend promises beyond the conformance suite: blocking claims that wake
on submit and on due delays (not on `poll_interval`), the multiplexed connection's
failure handling, retention TTLs, and URL / credential handling.

Checks that stop or kill a server use a private redis-server (servers.py); the rest use
the shared server under a fresh prefix.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
import redis
import redis.cluster

from salvador_core import ConfigurationError, Engine, Workflow
from salvador_core.errors import BackendUnavailableError
from salvador_core.task import Task, TaskStatus, new_task_id, utcnow
from salvador_redis import RedisBackend
from tests.helpers.redis_servers import RedisCluster, RedisServer, ServerFactory, command, free_port, unique

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisBackend]:
    async with RedisBackend.from_url(redis_url, prefix=redis_prefix) as backend:
        yield backend


def task(workflow: str = "wf", **fields: object) -> Task:
    return Task(id=new_task_id(), workflow=workflow, **fields)  # type: ignore[arg-type]


# -- waiting without polling --------------------------------------------------------------


async def test_blocked_claim_wakes_on_submit_not_on_its_wait(backend: RedisBackend) -> None:
    waiting = asyncio.create_task(backend.claim("wf", lease=10, wait=30))
    await asyncio.sleep(0.2)  # the claimer is blocked in BLMOVE by now
    assert not waiting.done()
    submitted = await backend.submit(task())
    began = time.monotonic()
    claim = await asyncio.wait_for(waiting, 5)
    assert claim is not None
    assert claim.task_id == submitted.id
    assert time.monotonic() - began < 5


async def test_delay_added_while_claimers_block_is_honoured_on_time(backend: RedisBackend) -> None:
    # The claimers chose how long to block before this due time existed.
    waiting = [asyncio.create_task(backend.claim("wf", lease=10, wait=30)) for _ in range(3)]
    await asyncio.sleep(0.2)
    delayed = await backend.submit(task(not_before=utcnow() + timedelta(seconds=0.5)))
    began = time.monotonic()
    done, _ = await asyncio.wait(waiting, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    took = time.monotonic() - began
    claims = [t.result() for t in done]
    for t in waiting:
        t.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert [c.task_id for c in claims if c is not None] == [delayed.id]
    assert 0.4 <= took < 5, f"the delayed task was claimed after {took:.2f}s, due after 0.5s"


async def test_idle_worker_starts_a_task_long_before_its_poll_interval(
    backend: RedisBackend,
) -> None:
    wf = Workflow("quick")
    wf.step("only", lambda ctx: "ok")
    engine = Engine(backend, workflows=[wf], poll_interval=2.5, lease=5.0, drain_timeout=1.0)
    await engine.open()
    runner = asyncio.create_task(engine.run(handle_signals=False))
    try:
        await asyncio.sleep(0.3)  # every claimer is blocked now
        began = time.monotonic()
        task_id = await engine.submit("quick", b"")
        while (done := await engine.get_task(task_id)) is None or not done.status.terminal:
            assert time.monotonic() - began < 1.25, "the idle worker waited for its poll interval"
            await asyncio.sleep(0.005)
        assert done.status is TaskStatus.COMPLETED
    finally:
        engine.stop()
        await asyncio.wait_for(runner, 40)


# -- the multiplexed connection under failure ---------------------------------------------


async def test_connection_killed_with_commands_in_flight_loses_and_doubles_nothing(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory("--enable-debug-command", "local")
    async with RedisBackend.from_url(server.url(unique("mux:"))) as backend:
        tasks = [await backend.submit(task(body=str(i).encode())) for i in range(200)]
        stored = [await backend.get(t.id) for t in tasks]
        connections_before = _stat(server, "total_connections_received")

        async def freeze_then_kill() -> None:
            # The server sleeps while the backend's commands pile up unanswered on its
            # connection; the kill is then processed among them: some ran (replies
            # lost), some never ran. Every one must be retried exactly safely.
            await asyncio.to_thread(command, server.port, "DEBUG", "SLEEP", "0.5")

        async def kill() -> None:
            await asyncio.sleep(0.1)
            await asyncio.to_thread(command, server.port, "CLIENT", "KILL", "TYPE", "normal")

        freezer = asyncio.create_task(freeze_then_kill())
        killer = asyncio.create_task(kill())
        await asyncio.sleep(0.05)
        new = [task(body=b"new") for _ in range(50)]
        results = await asyncio.gather(
            *(backend.update(t.evolve(step=1), t.version) for t in stored if t is not None),
            *(backend.submit(t) for t in new),
            *(backend.claim("wf", lease=0.5, wait=0) for _ in range(50)),
        )
        await asyncio.gather(freezer, killer)
        assert _stat(server, "total_connections_received") > connections_before, "nothing was killed"

        updated = results[:200]
        assert all(t.version == 2 for t in updated)  # type: ignore[union-attr]
        for t in tasks:
            after = await backend.get(t.id)
            assert after is not None
            assert (after.version, after.step) == (2, 1), "an update was lost or applied twice"
        submitted = results[200:250]
        assert [t.id for t in submitted] == [t.id for t in new]  # type: ignore[union-attr]
        claims = [c for c in results[250:] if c is not None]
        claimed = [c.task_id for c in claims]  # type: ignore[union-attr]
        assert len(claimed) == len(set(claimed)), "one task was leased twice at once"

        # A claim whose reply was lost leaves a lease nobody holds: it expires and the
        # task is delivered again. Every task comes out; none twice while leased.
        for c in claims:
            await backend.ack(c)  # type: ignore[arg-type]
        seen = set(claimed)
        deadline = time.monotonic() + 10
        while len(seen) < 250 and time.monotonic() < deadline:
            claim = await backend.claim("wf", lease=30, wait=0.6)
            if claim is not None:
                assert claim.task_id not in seen, "an acked task was delivered again"
                seen.add(claim.task_id)
                await backend.ack(claim)
        assert seen == {t.id for t in tasks} | {t.id for t in new}, "a task was lost"


async def test_stopped_server_fails_commands_after_the_socket_timeout_then_recovers(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory()
    async with RedisBackend.from_url(server.url(unique("stop:"), socket_timeout="0.5")) as backend:
        stored = await backend.submit(task())
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)  # half-open: the socket stays, no replies
        try:
            began = time.monotonic()
            with pytest.raises(BackendUnavailableError) as failure:
                await backend.get(stored.id)
            assert time.monotonic() - began < 5
            assert f"127.0.0.1:{server.port}" in str(failure.value)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        again = await backend.get(stored.id)
        assert again is not None
        assert again.id == stored.id


async def test_cancelled_callers_do_not_shift_the_replies_of_others(backend: RedisBackend) -> None:
    stored = [await backend.submit(task(body=str(i).encode())) for i in range(100)]
    pending = [asyncio.create_task(backend.get(t.id)) for t in stored]
    await asyncio.sleep(0)
    for t in pending[::2]:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for original, t in zip(stored[1::2], pending[1::2], strict=True):
        got = t.result()
        assert got is not None
        assert got.id == original.id
    for original in stored:
        got = await backend.get(original.id)
        assert got is not None
        assert got.body == original.body


# -- retention -----------------------------------------------------------------------------


async def test_retention_gives_only_finished_tasks_a_ttl(redis_url: str, redis_prefix: str) -> None:
    async with RedisBackend.from_url(redis_url, prefix=redis_prefix, retention=60) as backend:
        done, waiting = await backend.submit(task()), await backend.submit(task())
        claim = await backend.claim("wf", lease=10, wait=0)
        assert claim is not None
        assert claim.task_id == done.id
        await backend.settle(done.evolve(status=TaskStatus.COMPLETED), 1, claim)
        record = backend._base("wf") + "t:"
        ttl = await backend._exec("PTTL", record + done.id)
        assert 55_000 < ttl <= 60_000
        assert await backend._exec("PTTL", record + waiting.id) == -1
        # Run again (requeue): not finished any more, so no TTL.
        current = await backend.get(done.id)
        assert current is not None
        await backend.requeue(current.evolve(status=TaskStatus.PENDING), current.version)
        assert await backend._exec("PTTL", record + done.id) == -1


async def test_expired_finished_tasks_leave_no_trace(redis_url: str, redis_prefix: str) -> None:
    async with RedisBackend.from_url(redis_url, prefix=redis_prefix, retention=0.2) as backend:
        done = await backend.submit(task(idempotency_key="k"))
        claim = await backend.claim("wf", lease=10, wait=0)
        assert claim is not None
        await backend.settle(done.evolve(status=TaskStatus.COMPLETED), 1, claim)
        await asyncio.sleep(1.5)  # the TTL, plus the second the sweep leaves Redis to expire it
        assert await backend.get(done.id) is None
        await backend._sweep("wf")
        assert (await backend.list()).tasks == []
        assert not await backend._exec("HEXISTS", backend._ids_key, done.id)
        again = await backend.submit(task(idempotency_key="k"))
        assert again.id != done.id, "the expired task's idempotency key outlived it"


# -- counts (TaskCounts) -------------------------------------------------------------------


def _commands(server: RedisServer) -> dict[str, int]:
    """Calls per command so far (`INFO commandstats`), scripts' inner calls included."""
    found = {}
    for line in server.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, fields = line.removeprefix("cmdstat_").split(":", 1)
            found[name] = int(dict(kv.split("=") for kv in fields.split(","))["calls"])
    return found


async def test_stats_costs_the_same_with_ten_tasks_stored_as_with_two_thousand(
    redis_server_factory: ServerFactory,
) -> None:
    """Counting reads the status indexes' sizes and the queue structures, never the records:
    what stats() asks the server does not grow with the store (only the queue's head is read)."""
    server = redis_server_factory()
    costs = []
    for stored in (10, 2000):
        async with RedisBackend.from_url(server.url(unique("size:"))) as backend:
            created = [task(status=TaskStatus.COMPLETED) for _ in range(stored)]
            await asyncio.gather(*(backend.create(t) for t in created))
            await backend.submit(task())
            await backend.stats()  # scripts loaded, names known
            before = _commands(server)
            found = await backend.stats()
            after = _commands(server)
        assert found[0].counts == {"completed": stored, "pending": 1}
        # INFO: our own look at the figures.
        costs.append({name: n - before.get(name, 0) for name, n in after.items()
                      if n != before.get(name, 0) and name != "info"})
    assert costs[0] == costs[1], f"stats() sent more with 2,000 tasks stored than with 10: {costs}"
    assert costs[1].get("hget") == 1, f"stats() read {costs[1].get('hget')} records, not only the head"


async def test_counts_leave_out_finished_tasks_whose_retention_ran_out(
    redis_url: str, redis_prefix: str
) -> None:
    async with RedisBackend.from_url(redis_url, prefix=redis_prefix, retention=0.2) as backend:
        done = await backend.submit(task())
        await backend.submit(task())
        claim = await backend.claim("wf", lease=10, wait=0)
        assert claim is not None
        assert claim.task_id == done.id
        await backend.settle(done.evolve(status=TaskStatus.COMPLETED), 1, claim)
        await asyncio.sleep(1.5)  # the TTL, plus the second the sweep leaves Redis to expire it
        [stats] = await backend.stats()
    assert stats.counts == {"pending": 1}, "an expired record is still counted"
    assert sum(stats.completions) == 1, "a completion is an event: it stays counted for the hour"


async def test_a_settle_sent_again_after_a_lost_reply_counts_one_completion(backend: RedisBackend) -> None:
    stored = await backend.submit(task())
    claim = await backend.claim("wf", lease=10, wait=0)
    assert claim is not None
    done, data = backend._encode_write(stored.evolve(status=TaskStatus.COMPLETED), 1)
    args = (stored.id, 1, data, "completed", repr(done.updated_at.timestamp()), 0, claim.receipt)
    assert await backend._run("settle", "wf", *args) == [1]
    assert await backend._run("settle", "wf", *args) == [1]  # the replay: already written
    [stats] = await backend.stats()
    assert sum(stats.completions[-2:]) == 1, stats.completions
    counters = [key async for key in _keys(backend, "c:*")]
    assert len(counters) == 1, counters
    ttl_ms = await backend._exec("PTTL", counters[0])
    assert 3_600_000 < ttl_ms <= 7_200_000, f"a minute's counter must outlive the hour it shows: {ttl_ms}"


async def _keys(backend: RedisBackend, pattern: str) -> AsyncIterator[bytes]:
    cursor = b"0"
    while True:
        match = backend._base("wf") + pattern
        cursor, keys = await backend._exec("SCAN", cursor, "MATCH", match, "COUNT", 1000)
        for key in keys:
            yield key
        if int(cursor) == 0:
            return


async def test_counts_need_no_counters_from_earlier_versions(backend: RedisBackend) -> None:
    """A store written before completions were counted (no `c:<minute>` keys) is counted
    exactly all the same: by status and queue from the indexes every version keeps."""
    stored = await backend.submit(task())
    await backend.submit(task())
    claim = await backend.claim("wf", lease=10, wait=0)
    assert claim is not None
    await backend.settle(stored.evolve(status=TaskStatus.COMPLETED), 1, claim)
    counters = [key async for key in _keys(backend, "c:*")]
    await backend._exec("DEL", *counters)
    [stats] = await backend.stats()
    assert (stats.counts, stats.queued, stats.delayed) == ({"completed": 1, "pending": 1}, 1, 0)
    assert stats.completions == (0,) * 60


async def test_oldest_wait_is_the_head_of_the_queue_past_cancelled_entries(backend: RedisBackend) -> None:
    """The head is looked for in growing steps (10 ids, then 90, ...) past the entries of
    tasks cancelled while queued, which wait at the claiming end until a claim skips them."""
    now = utcnow()
    older = [await backend.submit(task(created_at=now - timedelta(seconds=100))) for _ in range(15)]
    await backend.submit(task(created_at=now - timedelta(seconds=50)))
    for cancelled in older:
        await backend.update(cancelled.evolve(status=TaskStatus.CANCELLED), 1)
    [stats] = await backend.stats()
    assert stats.queued == 1
    assert stats.oldest_wait_seconds is not None
    assert 49 < stats.oldest_wait_seconds < 60, stats


async def test_a_delay_that_ran_out_waits_from_its_due_time_before_any_claim(backend: RedisBackend) -> None:
    await backend.submit(task(not_before=utcnow() + timedelta(seconds=0.2)))
    [stats] = await backend.stats()
    assert (stats.queued, stats.delayed, stats.oldest_wait_seconds) == (0, 1, None), stats
    await asyncio.sleep(0.5)  # due now, still in `delayed`: no claim has promoted it
    [stats] = await backend.stats()
    assert (stats.queued, stats.delayed) == (1, 0), stats
    assert stats.oldest_wait_seconds is not None
    assert 0.2 < stats.oldest_wait_seconds < 5, stats


# -- URLs, credentials, tenants -----------------------------------------------------------


async def test_acl_user_limited_to_its_prefix_works_and_wrong_password_is_clear(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory()
    from salvador_redis.backend import ACL_RULES

    server.cli("ACL", "SETUSER", "tenant", "on", ">s3cret", "~t1:*", *ACL_RULES.split())
    good = f"redis://tenant:s3cret@127.0.0.1:{server.port}/0?prefix=t1:"
    async with RedisBackend.from_url(good) as backend:
        stored = await backend.submit(task())
        claim = await backend.claim("wf", lease=5, wait=0)
        assert claim is not None
        assert claim.task_id == stored.id
        assert "s3cret" not in repr(backend)
    with pytest.raises(ConfigurationError) as refused:
        async with RedisBackend.from_url(good.replace("s3cret", "wrong")):
            pass
    assert "credentials" in str(refused.value)
    assert "wrong" not in str(refused.value)
    with pytest.raises(ConfigurationError) as outside:
        async with RedisBackend.from_url(good.replace("prefix=t1:", "prefix=t2:")) as other:
            await other.submit(task())
    assert "ACL" in str(outside.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h:6379/x", "database number"),
        ("redis://h:6379/0?prefix=a&prefix=b", "given twice"),
        ("redis://h:6379/0?bogus=1", "unknown option"),
        ("redis://h:6379/0?ssl_ca_certs=/ca.pem", "rediss://"),
        ("redis://h:6379/1?cluster=true", "only database 0"),
        ("redis://h:6379/0?prefix=a{b", "hash tag"),
        ("redis://h:6379/0?socket_timeout=-1", "socket_timeout"),
        ("redis://h:6379/0?retention=soon", "retention"),
        ("rediss://h:6379/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
    ],
)
async def test_bad_urls_are_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        RedisBackend.from_url(url)
    assert problem in str(refused.value)


async def test_password_never_shows_in_repr_or_errors() -> None:
    port = free_port()
    backend = RedisBackend.from_url(f"redis://user:hunter2@127.0.0.1:{port}/0?socket_connect_timeout=0.5")
    assert "hunter2" not in repr(backend)
    with pytest.raises(BackendUnavailableError) as failure:
        await backend.open()
    assert "hunter2" not in str(failure.value)
    assert f"127.0.0.1:{port}" in str(failure.value)


async def test_a_client_that_decodes_responses_is_refused() -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis(decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        RedisBackend(client=client)
    await client.aclose()


async def test_a_given_client_is_used_and_left_open(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    async with RedisBackend(client=client, prefix=redis_prefix) as backend:
        stored = await backend.submit(task())
        assert await backend.get(stored.id) is not None
    assert await client.ping()
    await client.aclose()


def _stat(server: RedisServer, name: str) -> int:
    info = server.cli("INFO", "stats")
    return int(info.split(f"{name}:")[1].split()[0])


async def test_multiplexer_packs_commands_exactly_as_redis_py_does() -> None:
    from redis.asyncio.connection import Connection

    from salvador_redis.multiplex import pack

    args = ("EVALSHA", "ab" * 20, 1, "p:{p:wf}:", b"\x00\xffbytes", "ünï", 0, -5, 1.5, b"x" * 10_000)
    assert pack(args) == b"".join(Connection().pack_command(*args))
    with pytest.raises(Exception, match="convert it"):
        pack(("SET", "k", None))


async def test_rediss_url_talks_tls_and_verifies_the_server(
    redis_server_factory: ServerFactory, tmp_path: Path
) -> None:
    ca, cert, key = _certificates(tmp_path)
    tls_port = free_port()
    redis_server_factory(
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
    )
    url = f"rediss://127.0.0.1:{tls_port}/0?prefix=tls:&ssl_ca_certs={ca}"
    async with RedisBackend.from_url(url) as backend:
        stored = await backend.submit(task())
        claim = await backend.claim("wf", lease=5, wait=1)
        assert claim is not None
        assert claim.task_id == stored.id
    # Without the CA the server's certificate cannot be verified: refused, not downgraded.
    with pytest.raises(BackendUnavailableError):
        async with RedisBackend.from_url(f"rediss://127.0.0.1:{tls_port}/0?socket_connect_timeout=2"):
            pass


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem"))
    ext = directory / "san.cnf"
    # Complete X.509v3 extensions: Python 3.13 verifies with VERIFY_X509_STRICT, which
    # refuses a CA without keyUsage and a leaf without an authority key identifier.
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    for argv in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "1", "-subj", "/CN=salvador test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "1", "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, argv)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


# -- a full server (maxmemory, noeviction) ------------------------------------------------


def _traces(admin: redis.Redis, prefix: str, submitted: Task) -> list[str]:
    """Every place a submit writes to that holds something of `submitted` (whose workflow
    no other task uses): its workflow's keys, the id index, the workflow-name set."""
    base = f"{prefix}{{{prefix}{submitted.workflow}}}:"
    found = [k.decode() for k in admin.scan_iter(match=base.replace("{", "\\{").replace("}", "\\}") + "*")]
    if admin.hexists(prefix + "ids", submitted.id):
        found.append(f"{prefix}ids[{submitted.id}]")
    if admin.sismember(prefix + "workflows", submitted.workflow):
        found.append(f"{prefix}workflows[{submitted.workflow}]")
    return found


async def test_submit_refused_by_a_full_server_writes_nothing(
    redis_server_factory: ServerFactory,
) -> None:
    # Before the fix the id index and the workflow name were written ahead of the submit
    # script: at the edge of maxmemory they landed and the script was refused.
    server = redis_server_factory("--maxmemory-policy", "noeviction")
    admin = redis.Redis(port=server.port)
    prefix = unique("oom:")
    refused: list[Task] = []
    try:
        async with RedisBackend.from_url(server.url(prefix)) as backend:
            await backend.submit(task())  # scripts loaded, connection open
            for n in range(120):
                attempt = task(f"wf{n}", idempotency_key=f"k{n}", body=b"x" * 12_000)
                # From just below the memory in use to a little above it: some submits
                # fit, some are refused at the first command, some in between.
                used = int(admin.info("memory")["used_memory"])
                admin.config_set("maxmemory", used - 2_000 + (n % 30) * 1_500)
                problem: BackendUnavailableError | None = None
                try:
                    await backend.submit(attempt)
                except BackendUnavailableError as exc:
                    problem = exc
                finally:
                    admin.config_set("maxmemory", 0)
                if problem is not None:
                    assert "out of memory" in str(problem)
                    assert "nothing was written" in str(problem)
                    refused.append(attempt)
                    assert _traces(admin, prefix, attempt) == [], f"submit {n} left a trace"
            assert refused, "no submit was refused: the memory limits tried were too loose"
            again = await backend.submit(refused[0])  # the caller's retry, once there is room
            assert again.id == refused[0].id
            assert (await backend.get(again.id)) is not None
    finally:
        admin.close()
    print(f"{len(refused)} of 120 submits refused for memory, none left a trace")


async def test_cluster_submit_refused_by_a_full_node_leaves_no_id_entry(
    redis_cluster: RedisCluster,
) -> None:
    # On a cluster the id index lives in another slot than the workflow's keys and is
    # written first; when the workflow's node refuses the script, the entry is taken back.
    prefix = unique("oomc:")
    admin = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    try:
        ids_port = admin.get_node_from_key(prefix + "ids").port
        workflow = next(
            f"wf{i}" for i in range(100)
            if admin.get_node_from_key(f"{prefix}{{{prefix}wf{i}}}:t:x").port != ids_port
        )
        full = [p for p in redis_cluster.ports if p != ids_port]
        attempt = task(workflow, idempotency_key="k")
        async with RedisBackend.from_url(redis_cluster.url(prefix)) as backend:
            for port in full:
                command(port, "CONFIG", "SET", "maxmemory", "1")
            try:
                with pytest.raises(BackendUnavailableError, match="out of memory"):
                    await backend.submit(attempt)
            finally:
                for port in full:
                    command(port, "CONFIG", "SET", "maxmemory", "0")
            assert not admin.hexists(prefix + "ids", attempt.id)
            assert await backend.get(attempt.id) is None
            assert (await backend.submit(attempt)).id == attempt.id
            assert admin.hexists(prefix + "ids", attempt.id)
    finally:
        admin.close()


# -- requeue ------------------------------------------------------------------------------


async def test_requeue_sent_again_after_a_lost_reply_keeps_the_lease_granted_since(
    backend: RedisBackend,
) -> None:
    # The multiplexer sends a command again when its connection broke before the reply.
    # A requeue voids leases from before it; its replay must not void the lease of the
    # worker that claimed the requeued task in between.
    submitted = await backend.submit(task())
    cancelled = await backend.update(submitted.evolve(status=TaskStatus.CANCELLED), 1)
    stored, data = backend._encode_write(cancelled.evolve(status=TaskStatus.PENDING), 2)
    script_args = (stored.id, 2, data, "pending", repr(stored.updated_at.timestamp()), 0, 0)
    assert await backend._run("requeue", "wf", *script_args) == [1]
    claim = await backend.claim("wf", lease=30, wait=1)
    assert claim is not None
    assert await backend._run("requeue", "wf", *script_args) == [1]  # the replay
    await backend.extend(claim, lease=30)  # still the lease
    assert await backend.claim("wf", lease=30, wait=0.2) is None, "queued twice"
    await backend.ack(claim)
