"""What is particular to the NATS backend: the late-ack hazard, leases judged without
comparing workers' clocks, messages waiting for their record, batch claims and what they
cost, hostile workflow names, the stream and bucket settings it refuses or warns about,
URLs, and the ways to log in (password, token, NKEY, TLS).

Most tests use the shared server ($SALVADOR_TEST_NATS_URL) with a stream and bucket of
their own; those that need a server configured for them start a private one.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nacl.signing
import nkeys
import pytest
import pytest_asyncio
from nats.aio.msg import Msg
from nats.js import api

from salvador_core import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    Engine,
    LeaseLostError,
    StepContext,
    Workflow,
)
from salvador_core.config import connect
from salvador_core.task import Task, TaskStatus, encode_task, new_task_id
from salvador_nats import NatsBackend
from salvador_nats.layout import consumer_name, delayed_subject, ready_subject, token
from salvador_nats.pulls import _AtOnce, _command, _route_at_once
from tests.helpers.nats_servers import ServerFactory


@pytest_asyncio.fixture
async def backend(nats_url: str, nats_names: tuple[str, str]) -> AsyncIterator[NatsBackend]:
    stream, bucket = nats_names
    async with NatsBackend.from_url(f"{nats_url}?stream={stream}&bucket={bucket}&publish_grace=1") as b:
        yield b


@pytest_asyncio.fixture
async def pair(nats_url: str, nats_names: tuple[str, str]) -> AsyncIterator[tuple[NatsBackend, NatsBackend]]:
    """Two instances on one stream and bucket, as two processes have."""
    stream, bucket = nats_names
    url = f"{nats_url}?stream={stream}&bucket={bucket}"
    async with NatsBackend.from_url(url) as first, NatsBackend.from_url(url) as second:
        yield first, second


async def pending_acks(backend: NatsBackend, workflow: str) -> int:
    info = await backend.js.consumer_info(backend.settings.stream, consumer_name("q", workflow))
    return int(info.num_ack_pending or 0)


# -- the late-ack hazard (nats-server issue 4786) ---------------------------------------------


@pytest.mark.asyncio
async def test_slow_worker_past_its_ack_wait_can_neither_save_nor_ack_over_the_redelivery(
    backend: NatsBackend,
) -> None:
    task = await backend.submit(Task(id=new_task_id(), workflow="wf"))
    slow = await backend.claim("wf", lease=0.5, wait=2)  # and never heartbeats
    assert slow is not None
    await asyncio.sleep(0.7)
    fresh = await backend.claim("wf", lease=30, wait=3)
    assert fresh is not None
    assert (fresh.task_id, fresh.deliveries) == (task.id, 2)
    owned = await backend.update(task.evolve(status=TaskStatus.RUNNING, attempt=1, owner="fresh"), 1)

    with pytest.raises(ConflictError):  # the slow worker's late save: the revision moved on
        await backend.update(task.evolve(step=1, owner="slow"), 1)
    with pytest.raises(LeaseLostError):  # its late ack: refused before it reaches the server
        await backend.ack(slow)
    with pytest.raises(ConflictError):  # and a late settle writes nothing, acks nothing
        await backend.settle(task.evolve(status=TaskStatus.COMPLETED), 1, slow)
    # On the server the message is still pending for the fresh delivery: the stale ack did
    # not remove it (which a plain JetStream ack from the old delivery would have done).
    assert await pending_acks(backend, "wf") == 1
    await backend.release(fresh)
    again = await backend.claim("wf", lease=30, wait=3)
    assert again is not None
    assert (again.task_id, again.deliveries) == (task.id, 3)
    stored = await backend.get(task.id)
    assert stored is not None
    assert (stored.owner, stored.version) == ("fresh", owned.version)


@pytest.mark.asyncio
async def test_requeue_voids_every_lease_from_before_it(backend: NatsBackend) -> None:
    task = await backend.submit(Task(id=new_task_id(), workflow="wf"))
    stale = await backend.claim("wf", lease=30, wait=2)
    assert stale is not None
    failed = await backend.update(task.evolve(status=TaskStatus.FAILED), 1)
    again = await backend.requeue(failed.evolve(status=TaskStatus.PENDING), failed.version)
    for call in (backend.extend(stale, lease=30), backend.ack(stale), backend.release(stale, delay=60)):
        with pytest.raises(LeaseLostError):
            await call
    fresh = await backend.claim("wf", lease=30, wait=2)
    assert fresh is not None
    assert fresh.task is not None
    assert (fresh.task_id, fresh.task.version) == (task.id, again.version)


@pytest.mark.asyncio
async def test_a_second_message_of_a_task_held_by_a_live_claim_is_not_claimed_beside_it(
    backend: NatsBackend,
) -> None:
    # A task with two messages, as a producer that died mid-submit and its adopting retry
    # leave: the second delivery must wait for the first claim, not run the task beside it
    # (the second run then took the first's `running` record for a lost worker's).
    task = await backend.submit(Task(id=new_task_id(), workflow="wf"))
    await backend._publish("wf", task.id, version=1, not_before=None, suffix=".again")
    first = await backend.claim("wf", lease=3, wait=2)
    assert first is not None
    assert first.task_id == task.id
    assert await backend.claim("wf", lease=3, wait=0.5) is None, "a second live claim of one task"
    await backend.ack(first)
    second = await backend.claim("wf", lease=3, wait=6)
    assert second is not None, "the duplicate never came back once the first claim ended"
    assert second.task_id == task.id
    await backend.ack(second)


@pytest.mark.asyncio
async def test_a_delivery_that_went_stale_in_a_paused_process_is_never_claimed(
    nats_url: str, nats_names: tuple[str, str]
) -> None:
    # A worker paused past its lease may find, when it wakes, deliveries its pull requests
    # received meanwhile: the message it held, delivered again before the server gave it
    # to another worker, or a delivery whose lease ran out while it sat in the buffer.
    # Taking either would run the task beside its current holder.
    stream, bucket = nats_names
    url = f"{nats_url}?stream={stream}&bucket={bucket}"
    async with NatsBackend.from_url(url) as paused, NatsBackend.from_url(url) as current:
        task = await paused.submit(Task(id=new_task_id(), workflow="wf"))
        first = await paused.claim("wf", lease=0.5, wait=2)
        assert first is not None
        owned = await paused.update(task.evolve(status=TaskStatus.RUNNING, attempt=1, owner="paused"), 1)
        await asyncio.sleep(0.7)  # its lease runs out; the server delivers the message again
        holder = await current.claim("wf", lease=30, wait=3)
        assert holder is not None
        assert holder.deliveries == 2
        await current.update(owned.evolve(attempt=2, owner="current"), owned.version)
        queue = await paused._queue("wf", 0.5)

        def late(reply: str) -> Msg:
            return Msg(paused.nc, subject="wf", reply=reply, data=task.id.encode(),
                       headers={"Salvador-Version": "1"})

        superseded = late(first.receipt.partition(" ")[2])  # the first delivery, seen again
        assert await paused._take("wf", queue.ack_wait, superseded, 30, time.time()) is None, (
            "a delivery whose message was delivered again since was claimed beside its holder"
        )
        expired = late(holder.receipt.partition(" ")[2])  # fresh, but its lease ran out unread
        assert await paused._take("wf", queue.ack_wait, expired, 30, time.time() - 60) is None, (
            "a delivery whose lease ran out before it was taken was claimed"
        )
        await current.extend(holder, lease=30)  # untouched: nothing acked or nak'ed it
        assert await pending_acks(current, "wf") == 1
        stored = await current.get(task.id)
        assert stored is not None
        assert stored.owner == "current"


@pytest.mark.asyncio
@pytest.mark.parametrize("skew", [-120.0, 120.0], ids=["holder-behind", "claimer-ahead"])
async def test_clock_skew_between_workers_never_lets_a_second_message_run_beside_a_live_claim(
    nats_url: str, nats_names: tuple[str, str], skew: float
) -> None:
    # Two workers whose clocks disagree by two minutes (either one may be the wrong one).
    # The holder is live and within its lease: however the clocks differ, the other worker
    # must not take the task from it through the task's second message.
    stream, bucket = nats_names
    url = f"{nats_url}?stream={stream}&bucket={bucket}&publish_grace=1"
    async with NatsBackend.from_url(url) as holder, NatsBackend.from_url(url) as other:
        if skew < 0:
            holder.clock = lambda: time.time() + skew
        else:
            other.clock = lambda: time.time() + skew
        task = await holder.submit(Task(id=new_task_id(), workflow="wf"))
        await holder._publish("wf", task.id, version=1, not_before=None, suffix=".again")
        first = await holder.claim("wf", lease=3, wait=2)  # one delivery: the other stays queued
        assert first is not None
        owned = await holder.update(task.evolve(status=TaskStatus.RUNNING, attempt=1, owner="holder"), 1)
        assert await other.claim("wf", lease=3, wait=1.0) is None, (
            "a worker whose clock disagrees with the holder's took the task from a live claim"
        )
        await holder.settle(owned.evolve(status=TaskStatus.COMPLETED, owner=None), owned.version, first)
        stored = await other.get(task.id)
        assert stored is not None
        assert (stored.status, stored.attempt) == (TaskStatus.COMPLETED, 1)


# -- submit's two writes ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_message_waits_for_its_record_within_the_grace_and_is_dropped_after_it(
    backend: NatsBackend,
) -> None:
    early = Task(id=new_task_id(), workflow="wf")
    orphan = Task(id=new_task_id(), workflow="wf")
    # What a producer that died between its two writes leaves: a message, no record.
    await backend._publish("wf", early.id, version=1, not_before=None)
    await backend._publish("wf", orphan.id, version=1, not_before=None)
    assert await backend.claim("wf", lease=30, wait=0.2) is None, "a message without a record was handed out"
    await backend.create(early)  # the slow producer's record lands within the grace
    claim = await backend.claim("wf", lease=30, wait=2)
    assert claim is not None
    assert claim.task_id == early.id
    await backend.ack(claim)
    assert await backend.claim("wf", lease=30, wait=1.5) is None  # the orphan's grace runs out

    async def queue_empty() -> bool:
        return (await backend.js.stream_info(backend.settings.stream)).state.messages == 0

    deadline = time.monotonic() + 5
    while not await queue_empty():
        assert time.monotonic() < deadline, "a message whose record never came was kept"
        await backend.claim("wf", lease=30, wait=0.2)


@pytest.mark.asyncio
async def test_a_message_delivered_just_before_its_record_lands_is_claimed_on_that_delivery(
    backend: NatsBackend,
) -> None:
    # An idle worker's pull gets a message the moment it is published, while the producer's
    # record write (which comes second) is still on its way: the claim looks again at once
    # instead of handing the message back for a backoff (a p99 of tens of milliseconds).
    await backend.claim_many("wf", 1, lease=30, wait=0)  # the consumer exists
    task = Task(id=new_task_id(), workflow="wf")
    waiting = asyncio.ensure_future(backend.claim_many("wf", 1, lease=30, wait=3))
    await asyncio.sleep(0.1)  # the claim waits in its pull request
    await backend._publish("wf", task.id, version=1, not_before=None)
    await asyncio.sleep(0.003)
    await backend.create(task)
    (claim,) = await waiting
    assert (claim.task_id, claim.deliveries) == (task.id, 1), "the first delivery was handed back"


@pytest.mark.asyncio
async def test_a_claimer_whose_clock_runs_ahead_never_drops_a_message_its_record_is_coming_for(
    backend: NatsBackend,
) -> None:
    # The claimer's clock is two minutes ahead of the server's: by that clock every message
    # is older than publish_grace (1 s here) the moment it is published. A message whose
    # producer is slow to write the record must still wait for it on the server's clock.
    backend.clock = lambda: time.time() + 120
    slow = Task(id=new_task_id(), workflow="wf")
    await backend._publish("wf", slow.id, version=1, not_before=None)
    assert await backend.claim("wf", lease=30, wait=0.4) is None  # no record yet: it waits
    await backend.create(slow)  # the slow producer's record lands within the grace
    claim = await backend.claim("wf", lease=30, wait=3)
    assert claim is not None, "the message was dropped while its record was on its way"
    assert claim.task_id == slow.id


@pytest.mark.asyncio
async def test_listing_never_reports_an_empty_bucket_that_holds_records(backend: NatsBackend) -> None:
    """nats-py's kv.keys()/watch() now and then signals "no more keys" before it has handed
    out the keys already in its buffer (nats-py issue 842): a listing came back empty about
    1 time in 500 (the conformance suite's list and purge checks failed in 1 run of 5)."""
    ids = {(await backend.submit(Task(id=new_task_id(), workflow="wf", body=b"x"))).id for _ in range(3)}
    await backend.delete(sorted(ids)[0])  # a delete marker among the entries
    ids.discard(sorted(ids)[0])
    wrong = 0
    for _ in range(150):
        listings = await asyncio.gather(*(backend.list(limit=10) for _ in range(20)))
        wrong += sum({t.id for t in page.tasks} != ids for page in listings)
    assert wrong == 0, f"{wrong} of 3,000 listings wrong"
    await backend.delete(sorted(ids)[0])
    await backend.delete(sorted(ids)[1])
    assert (await backend.list()).tasks == [], "a bucket holding only delete markers lists nothing"


# -- a submit's message carries its record ---------------------------------------------------


@pytest.mark.asyncio
async def test_a_first_delivery_is_claimed_unread_and_a_task_written_since_never_runs(
    pair: tuple[NatsBackend, NatsBackend],
) -> None:
    # The first delivery of a submit's message is claimed from the record in its body. A
    # task written since (cancelled here, by another process) must not run: the ownership
    # write, a create of t.<id>, is refused. The message comes back after its AckWait, is
    # read this time, and is handed out as the terminal task it is (the engine acks it).
    worker, admin = pair
    task = await admin.submit(Task(id=new_task_id(), workflow="wf"))
    cancelled = await admin.update(task.evolve(status=TaskStatus.CANCELLED), 1)
    claim = await worker.claim("wf", lease=1, wait=2)
    assert claim is not None
    assert claim.task is not None
    assert (claim.deliveries, claim.task.status) == (1, TaskStatus.PENDING)
    with pytest.raises(ConflictError) as refused:
        await worker.update(claim.task.evolve(status=TaskStatus.RUNNING, attempt=1, owner="w"), 1)
    assert refused.value.actual_version == cancelled.version
    assert await admin.get(task.id) == cancelled
    again = await worker.claim("wf", lease=30, wait=3)
    assert again is not None
    assert again.task is not None
    assert (again.deliveries, again.task.status) == (2, TaskStatus.CANCELLED)
    await worker.ack(again)


@pytest.mark.asyncio
async def test_a_submits_message_whose_record_never_came_runs_from_its_body(
    pair: tuple[NatsBackend, NatsBackend],
) -> None:
    # Its producer died between the publish and the record: the message carries the
    # record, so the task runs, on its first delivery and on a later one (a claimer that
    # died before taking ownership), and its record is there afterwards.
    died, worker = pair
    task = Task(id=new_task_id(), workflow="wf", body=b"payload").evolve(version=1)
    await died._publish("wf", task.id, version=1, not_before=None, record=encode_task(task))
    first = await died.claim("wf", lease=1, wait=2)
    assert first is not None
    assert first.task == task
    claim = await worker.claim("wf", lease=30, wait=3)  # after the first claim's AckWait
    assert claim is not None
    assert (claim.deliveries, claim.task) == (2, task)
    owned = await worker.update(task.evolve(status=TaskStatus.RUNNING, attempt=1, owner="w"), 1)
    await worker.settle(owned.evolve(status=TaskStatus.COMPLETED, owner=None), owned.version, claim)
    stored = await died.get(task.id)
    assert stored is not None
    assert (stored.status, stored.body) == (TaskStatus.COMPLETED, b"payload")


@pytest.mark.asyncio
async def test_a_deleted_tasks_queued_message_is_claimed_but_never_runs_and_is_dropped(
    backend: NatsBackend,
) -> None:
    task = await backend.submit(Task(id=new_task_id(), workflow="wf"))
    assert await backend.delete(task.id)
    claim = await backend.claim("wf", lease=1, wait=2)  # unread: it cannot know
    assert claim is not None
    assert claim.task is not None
    with pytest.raises(ConflictError) as refused:  # the create of t.<id> meets its marker
        await backend.update(claim.task.evolve(status=TaskStatus.RUNNING, attempt=1, owner="w"), 1)
    assert refused.value.actual_version is None
    assert await backend.claim("wf", lease=30, wait=2.5) is None  # read this time: gone, acked

    async def queue_empty() -> bool:
        return (await backend.js.stream_info(backend.settings.stream)).state.messages == 0

    deadline = time.monotonic() + 3
    while not await queue_empty():
        assert time.monotonic() < deadline, "a deleted task's message was kept"
        await asyncio.sleep(0.05)
    assert await backend.get(task.id) is None
    assert (await backend.list()).tasks == []


@pytest.mark.asyncio
async def test_a_message_body_that_is_not_its_record_is_read_past(backend: NatsBackend) -> None:
    # A body whose record does not decode, or is another task's, is not trusted: the
    # record is read as for any other message.
    task = await backend.submit(Task(id=new_task_id(), workflow="wf", body=b"stored"))
    assert await backend.claim("wf", lease=30, wait=2) is not None  # the submit's own message
    other = Task(id=new_task_id(), workflow="wf").evolve(version=1)
    for n, body in enumerate((b"{not json", encode_task(other), encode_task(task.evolve(version=2)))):
        backend._held.clear()  # as if the claims before were another process's
        backend._revisions.clear()
        await backend._publish("wf", task.id, version=1, not_before=None, record=body, suffix=f".{n}")
        claim = await backend.claim("wf", lease=30, wait=2)
        assert claim is not None
        assert claim.task is not None
        assert (claim.task_id, claim.task.body) == (task.id, b"stored"), body


@pytest.mark.asyncio
async def test_a_message_in_a_newer_format_is_left_for_a_newer_worker(
    backend: NatsBackend, caplog: pytest.LogCaptureFixture
) -> None:
    # A producer of a later version may queue messages this version cannot read: they are
    # handed back for a worker that can (never taken for a task id, never dropped), and a
    # delayed one keeps its format when this version's promoter moves it to the ready queue.
    stream = backend.settings.stream
    await backend.claim("wf", lease=1, wait=0)  # the consumers exist, the promoter runs
    newer = {"Salvador-Format": "2", "Salvador-Version": "1"}
    ready = ready_subject(stream, "wf")
    await backend.records.publish(ready, b"whatever 2 is", {**newer, "Nats-Msg-Id": "n1"})
    due = str(int((time.time() + 0.3) * 1000))
    await backend.records.publish(
        delayed_subject(stream, "wf"), b"later", {**newer, "Nats-Msg-Id": "n2.d", "Salvador-Due": due}
    )
    with caplog.at_level(logging.WARNING, logger="salvador"):
        assert await backend.claim("wf", lease=1, wait=1.5) is None
    assert "in format '2', newer than this salvador's" in caplog.text
    promoted = await backend.js.get_last_msg(stream, ready)
    assert (promoted.data, (promoted.headers or {}).get("Salvador-Format")) == (b"later", "2")
    info = await backend.js.stream_info(stream)
    assert info.state.messages == 2, "a message in a newer format was dropped"


@pytest.mark.asyncio
async def test_duplicate_submit_publishes_nothing_new(backend: NatsBackend) -> None:
    first = await backend.submit(Task(id=new_task_id(), workflow="wf", idempotency_key="k"))
    again = await backend.submit(Task(id=new_task_id(), workflow="wf", idempotency_key="k"))
    assert again.id == first.id
    info = await backend.js.stream_info(backend.settings.stream)
    assert info.state.messages == 1


# -- batch claims and what a task costs --------------------------------------------------------


@pytest.mark.asyncio
async def test_claim_many_leases_exactly_the_limit_oldest_first_and_holds_nothing_more(
    nats_url: str, nats_names: tuple[str, str],
) -> None:
    stream, bucket = nats_names
    url = f"{nats_url}?stream={stream}&bucket={bucket}"
    async with NatsBackend.from_url(url) as first, NatsBackend.from_url(url) as second:
        ids = [(await first.submit(Task(id=new_task_id(), workflow="wf"))).id for _ in range(10)]
        batch = await first.claim_many("wf", 4, lease=30, wait=2)
        assert [c.task_id for c in batch] == ids[:4]
        assert all(c.task is not None and c.task.id == c.task_id for c in batch)
        assert await pending_acks(first, "wf") == 4, "a delivery no claim was made for is held"
        started = time.monotonic()
        rest = await second.claim_many("wf", 10, lease=30, wait=2)
        assert [c.task_id for c in rest] == ids[4:]
        assert time.monotonic() - started < 5, "tasks the first batch did not claim waited for an AckWait"
        assert await second.claim_many("wf", 3, lease=30, wait=0.2) == []
        for claim in (*batch, *rest):
            await (first if claim in batch else second).ack(claim)
        deadline = time.monotonic() + 3  # acks are not waited for: the server applies them soon
        while await pending_acks(first, "wf") > 0:
            assert time.monotonic() < deadline, "acked deliveries are still pending"
            await asyncio.sleep(0.02)
        with pytest.raises(ValueError, match="at least 1"):
            await first.claim_many("wf", 0, lease=30, wait=0)


@pytest.mark.asyncio
async def test_claim_many_cancelled_while_waiting_or_taking_holds_nothing(
    nats_url: str, nats_names: tuple[str, str],
) -> None:
    stream, bucket = nats_names
    url = f"{nats_url}?stream={stream}&bucket={bucket}"
    async with NatsBackend.from_url(url) as first, NatsBackend.from_url(url) as second:
        waiting = asyncio.create_task(first.claim_many("wf", 5, lease=30, wait=10))
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        ids = {(await second.submit(Task(id=new_task_id(), workflow="wf"))).id for _ in range(5)}
        started = time.monotonic()
        got = {c.task_id for c in await second.claim_many("wf", 5, lease=30, wait=3)}
        while len(got) < 5 and time.monotonic() - started < 5:
            got |= {c.task_id for c in await second.claim_many("wf", 5, lease=30, wait=0.5)}
        assert got == ids, "a cancelled batch claim kept deliveries until their AckWait"


@pytest.mark.asyncio
async def test_a_batch_cancelled_while_reading_hands_back_the_claims_it_made_without_a_read(
    pair: tuple[NatsBackend, NatsBackend],
) -> None:
    # A batch whose first deliveries are claimed at once (no read) and whose last needs a
    # read: cancelled during that read, it hands every delivery back, the ones claimed
    # already too, and keeps no claim on them.
    first, second = pair
    ids = [(await second.submit(Task(id=new_task_id(), workflow="wf"))).id for _ in range(2)]
    plain = Task(id=new_task_id(), workflow="wf")
    await second.create(plain)
    await second.enqueue("wf", plain.id)  # a message without a record body: read at its claim
    reading = asyncio.Event()
    read = first.records.read

    async def slow(key: str) -> object:
        reading.set()
        await asyncio.sleep(10)
        return await read(key)

    first.records.read = slow  # type: ignore[method-assign]
    batch = asyncio.create_task(first.claim_many("wf", 3, lease=30, wait=3))
    await asyncio.wait_for(reading.wait(), 5)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    assert first._held == {}, "a claim made before the cancel is still held"
    started = time.monotonic()
    got: set[str] = set()
    while len(got) < 3 and time.monotonic() - started < 5:
        got |= {c.task_id for c in await second.claim_many("wf", 3, lease=30, wait=0.5)}
    assert got == {*ids, plain.id}, "a cancelled batch kept deliveries until their AckWait"


@pytest.mark.asyncio
async def test_one_step_costs_two_request_replies_and_a_release_after_a_write_one(
    backend: NatsBackend,
) -> None:
    # The hot path of a one-step task: the claim takes the record from the submit's message
    # (no read); taking ownership (a create) and the final write are one compare-and-set
    # each and carry the lease with them (no lease write of their own); the ack is not
    # waited for.
    await backend.submit(Task(id=new_task_id(), workflow="wf"))
    await backend.claim_many("wf", 1, lease=30, wait=0)  # the consumer exists: not counted
    task = await backend.submit(Task(id=new_task_id(), workflow="wf"))
    sent: list[str] = []
    inbox = backend._inbox
    assert inbox is not None
    request = inbox.request

    async def counted(subject: str, payload: bytes, *, headers: dict[str, str] | None = None) -> Msg:
        sent.append(subject.split(".")[1] if subject.startswith("$KV.") else subject.rsplit(".", 2)[-2])
        return await request(subject, payload, headers=headers)

    inbox.request = counted  # type: ignore[method-assign]
    (claim,) = await backend.claim_many("wf", 1, lease=30, wait=2)
    owned = await backend.update(task.evolve(status=TaskStatus.RUNNING, attempt=1, owner="me"), 1)
    await backend.settle(owned.evolve(status=TaskStatus.COMPLETED, owner=None), owned.version, claim)
    assert sent == [bucket_of(backend), bucket_of(backend)], sent

    sent.clear()
    retried = await backend.submit(Task(id=new_task_id(), workflow="wf"))
    sent.clear()
    (claim,) = await backend.claim_many("wf", 1, lease=30, wait=2)
    owned = await backend.update(retried.evolve(status=TaskStatus.RUNNING, attempt=1, owner="me"), 1)
    pending = await backend.update(owned.evolve(status=TaskStatus.PENDING, owner=None), owned.version)
    await backend.release(claim, delay=60)  # its lease ends with one compare-and-set, no read
    assert sent == [bucket_of(backend), bucket_of(backend), bucket_of(backend)], sent
    with pytest.raises(LeaseLostError):
        await backend.extend(claim, lease=30)
    stored = await backend.get(retried.id)
    assert stored == pending


@pytest.mark.asyncio
async def test_replies_and_deliveries_reach_their_waiter_as_the_client_reads_them(
    backend: NatsBackend, caplog: pytest.LogCaptureFixture
) -> None:
    # The inbox's subscriptions hand each message over where nats-py reads it (no queue, no
    # task of the subscription's in between), keep nats-py's pending-bytes count at zero,
    # and a route that raises is logged without stopping the client's reader.
    inbox = backend._inbox
    assert inbox is not None
    assert inbox._sub is not None
    assert isinstance(inbox._sub._pending_queue, _AtOnce)
    task = await backend.submit(Task(id=new_task_id(), workflow="wf"))
    (claim,) = await backend.claim_many("wf", 1, lease=30, wait=2)  # a pull's own inbox, too
    assert claim.task_id == task.id
    assert inbox._sub._pending_size == 0
    assert inbox._sub.pending_msgs == 0

    route = inbox._sub._pending_queue._route  # type: ignore[attr-defined]
    calls = [0]

    def broken(msg: Msg) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("a routing bug")
        route(msg)

    inbox._sub._pending_queue._route = broken  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="salvador"), pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(backend.get(task.id), 0.5)  # its reply was dropped
    assert "routing a reply failed" in caplog.text
    assert await backend.get(task.id) is not None  # the reader goes on
    inbox._sub._pending_queue._route = route  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_runs_and_pull_requests_leave_nothing_for_the_cycle_collector(backend: NatsBackend) -> None:
    # Every finished run and every pull request's subscription used to be a reference
    # cycle: about 19 objects a task, kept until the collector ran. With the collector off,
    # what is unreachable after 300 tasks must be a few objects of the shutdown, not a pile.
    tasks = 300
    done = asyncio.Event()
    finished = 0

    async def count(ctx: StepContext) -> None:
        nonlocal finished
        finished += 1
        if finished == tasks:
            done.set()

    wf = Workflow("tidy").step("count", count)
    engine = Engine(backend, workflows=[wf], concurrency=20, poll_interval=0.2, observers=[])
    for _ in range(tasks):
        await engine.submit(wf)
    gc.collect()
    gc.disable()
    try:
        worker = asyncio.create_task(engine.run(handle_signals=False))
        await asyncio.wait_for(done.wait(), 60)
        await asyncio.sleep(1.5)  # the last pull requests expire on the server
        engine.stop()
        await worker
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = collections.Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert sum(kinds.values()) < 150, kinds.most_common(12)
    assert not {"Run", "Pull", "Subscription", "_AtOnce"} & kinds.keys(), kinds.most_common(12)


def test_a_subscription_without_the_expected_internals_keeps_its_callback_path() -> None:
    class Other:
        def __init__(self, queue: object, size: object) -> None:
            self._pending_queue = queue
            self._pending_size = size

    for sub in (Other(None, 0), Other([], 0), Other(asyncio.Queue(), "0")):
        before = sub._pending_queue
        _route_at_once(sub, lambda msg: None)  # type: ignore[arg-type]
        assert sub._pending_queue is before


def test_commands_are_what_nats_py_would_queue_and_anything_else_is_left_to_it() -> None:
    assert _command("a.b", "_INBOX.x.1", b"hi", None) == b"PUB a.b _INBOX.x.1 2\r\nhi\r\n"
    assert _command("$JS.ACK.s.c.1.2.3.4.0", "", b"+ACK", None) == b"PUB $JS.ACK.s.c.1.2.3.4.0 4\r\n+ACK\r\n"
    head = b"NATS/1.0\r\nSalvador-Version: 1\r\n\r\n"
    assert _command("a.b", "r", b"x", {"Salvador-Version": "1"}) == (
        b"HPUB a.b r %d %d\r\n%bx\r\n" % (len(head), len(head) + 1, head)
    )
    for subject, reply, headers in [
        ("a b", "r", None),  # a blank would split the command
        ("a.b", "r\n", None),
        ("", "r", None),
        ("a.b", "r", {"X-Other": "1"}),  # not a header of ours: nats-py checks it
        ("a.b", "r", {"Salvador-Version": "1\r\n"}),
        ("a.b", "", {"Salvador-Version": "1"}),  # headers without a reply
    ]:
        assert _command(subject, reply, b"x", headers) is None, (subject, reply, headers)


def bucket_of(backend: NatsBackend) -> str:
    return backend.settings.bucket


# -- names --------------------------------------------------------------------------------------

#: Names that would break a naive subject or key: separators, wildcards, spaces, unicode,
#: and names that are other names' encodings (token("a") == "w61").
HOSTILE = [
    "a.b", "a", "*", ">", "a b", " lead and trail ", "café ✓ 工作流", "a.>",
    token("a"), token(token("a")), f"q-{token('a')}",
]


@pytest.mark.asyncio
async def test_hostile_workflow_names_stay_isolated(backend: NatsBackend) -> None:
    ids = {}
    for name in HOSTILE:
        ids[name] = {(await backend.submit(Task(id=new_task_id(), workflow=name))).id for _ in range(2)}
    subjects = {token(name) for name in HOSTILE}
    assert len(subjects) == len(HOSTILE), "two names share a subject token"
    for name in HOSTILE:
        got = set()
        while (claim := await backend.claim(name, lease=30, wait=0)) is not None:
            assert claim.workflow == name
            got.add(claim.task_id)
            await backend.ack(claim)
        assert got == ids[name], f"workflow {name!r} got another workflow's tasks or lost its own"

    ran: dict[str, list[str]] = {name: [] for name in HOSTILE}
    flows = []
    for name in HOSTILE:
        def record(ctx: StepContext, name: str = name) -> None:
            ran[name].append(ctx.task.workflow)
        flows.append(Workflow(name).step("only", record))
    engine = Engine(backend, workflows=flows)
    submitted = {name: await engine.submit(name) for name in HOSTILE}
    worker = asyncio.create_task(engine.run(handle_signals=False))
    try:
        deadline = time.monotonic() + 15
        while any(not ran[name] for name in HOSTILE):
            assert time.monotonic() < deadline, {n: r for n, r in ran.items() if not r}
            await asyncio.sleep(0.02)
    finally:
        engine.stop()
        await worker
    assert ran == {name: [name] for name in HOSTILE}
    await backend.open()  # engine.run() closed it on its way out
    for name, tid in submitted.items():
        task = await backend.get(tid)
        assert task is not None
        assert (task.workflow, task.status) == (name, TaskStatus.COMPLETED)


# -- stream and bucket settings ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_stream_and_bucket_are_created_with_file_storage_and_work_queue_retention(
    backend: NatsBackend,
) -> None:
    stream = (await backend.js.stream_info(backend.settings.stream)).config
    bucket = (await backend.js.stream_info(f"KV_{backend.settings.bucket}")).config
    assert stream.retention == api.RetentionPolicy.WORK_QUEUE
    assert (stream.storage, bucket.storage) == (api.StorageType.FILE, api.StorageType.FILE)
    assert not stream.max_age
    assert not bucket.max_age
    assert bucket.max_msgs_per_subject == 1


@pytest.mark.asyncio
async def test_a_stream_that_is_not_a_work_queue_is_refused(
    nats_url: str, nats_names: tuple[str, str]
) -> None:
    stream, bucket = nats_names
    async with NatsBackend.from_url(f"{nats_url}?stream={stream}x&bucket={bucket}") as probe:
        await probe.js.add_stream(name=stream, subjects=[f"{stream}.>"], retention=api.RetentionPolicy.LIMITS)
    with pytest.raises(ConfigurationError, match="work-queue retention"):
        await NatsBackend.from_url(f"{nats_url}?stream={stream}&bucket={bucket}").open()


@pytest.mark.asyncio
async def test_memory_storage_is_warned_about(
    nats_url: str, nats_names: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    stream, bucket = nats_names
    async with NatsBackend.from_url(f"{nats_url}?stream={stream}x&bucket={bucket}x") as probe:
        await probe.js.add_stream(
            name=stream, subjects=[f"{stream}.q.*", f"{stream}.d.*"],
            retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.MEMORY,
        )
    with caplog.at_level(logging.WARNING, logger="salvador.nats"):
        async with NatsBackend.from_url(f"{nats_url}?stream={stream}&bucket={bucket}"):
            pass
    assert any("memory storage" in r.getMessage() for r in caplog.records), caplog.text


# -- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("nats://h:4222?stream=a.b", "not a valid JetStream name"),
        ("nats://h:4222?bucket=", "not a valid JetStream name"),
        ("nats://h:4222?replicas=0", "replicas must be at least 1"),
        ("nats://h:4222?replicas=7", "replicas must be 1 to 5"),
        ("nats://h:4222?colour=red", "unknown option"),
        ("nats://h:4222?stream=a&stream=b", "given twice"),
        ("nats://h:port", "no valid port"),
        ("nats://h:4222?creds=/no/such.creds", "no such file"),
        ("nats://h:4222?tls_cert=/etc/hostname", "go together"),
        ("nats://u:p@h:4222?token=t", "one way to authenticate"),
        ("nats://h:4222?publish_grace=-1", "publish_grace"),
        ("http://h:4222", "nats:// or tls://"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        NatsBackend.from_url(url)


def test_urls_find_the_backend_and_read_their_options() -> None:
    backend = connect("nats://a:1,b:2?stream=s&bucket=k&replicas=3&publish_grace=5")
    assert isinstance(backend, NatsBackend)
    settings = backend.settings
    assert settings.servers == ["nats://a:1", "nats://b:2"]
    assert (settings.stream, settings.bucket, settings.replicas, settings.publish_grace) == ("s", "k", 3, 5.0)
    assert isinstance(connect("tls://h:4222"), NatsBackend)
    assert NatsBackend.from_url("tls://h").settings.tls


def test_secrets_never_show_in_repr_or_settings() -> None:
    for url in ("nats://user:hunter2@h:4222", "nats://hunter2@h:4222", "nats://h:4222?token=hunter2"):
        backend = NatsBackend.from_url(url)
        assert "hunter2" not in repr(backend)
        assert "hunter2" not in repr(backend.settings)
        assert "hunter2" not in backend.where


@pytest.mark.asyncio
async def test_unreachable_server_is_unavailable_and_named_without_its_password() -> None:
    from tests.helpers.redis_servers import free_port

    url = f"nats://app:hunter2@127.0.0.1:{free_port()}?connect_timeout=0.5"
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as caught:
        await NatsBackend.from_url(url).open()
    assert time.monotonic() - started < 10
    assert f"nats://app:***@127.0.0.1:{url.split(':')[3].split('?')[0]}" in str(caught.value)
    assert "hunter2" not in str(caught.value)


# -- logging in: password, token, NKEY, TLS (private servers) ----------------------------------


async def _runs_a_task(url: str) -> None:
    ran: list[str] = []
    wf = Workflow("auth").step("only", lambda ctx: ran.append(ctx.task.id))
    async with Engine.from_url(url, workflows=[wf]) as engine:
        tid = await engine.submit(wf)
        worker = asyncio.create_task(engine.run(handle_signals=False))
        deadline = time.monotonic() + 10
        while not ran:
            assert time.monotonic() < deadline, "the task did not run"
            await asyncio.sleep(0.02)
        engine.stop()
        await worker
    assert ran == [tid]


@pytest.mark.asyncio
async def test_password_and_token_log_in_and_a_wrong_password_is_a_clear_error(
    nats_servers: ServerFactory,
) -> None:
    users = nats_servers.server('authorization { users: [ { user: app, password: "s3cret" } ] }')
    await _runs_a_task(users.url().replace("nats://", "nats://app:s3cret@"))
    with pytest.raises(ConfigurationError, match="refused the credentials") as caught:
        await NatsBackend.from_url(users.url().replace("nats://", "nats://app:wrong@")).open()
    assert "wrong" not in str(caught.value)
    tokens = nats_servers.server('authorization { token: "t0ken" }')
    await _runs_a_task(tokens.url(token="t0ken"))


@pytest.mark.asyncio
async def test_nkey_seed_file_logs_in(nats_servers: ServerFactory, tmp_path: Path) -> None:
    raw = bytes(nacl.signing.SigningKey.generate())
    seed = nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(seed).public_key.decode()
    (tmp_path / "user.nk").write_bytes(seed)
    server = nats_servers.server(f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}')
    await _runs_a_task(server.url(nkey=str(tmp_path / "user.nk")))


@pytest.mark.asyncio
async def test_tls_url_talks_tls_and_verifies_the_server(nats_servers: ServerFactory, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(made.communicate(), 60)
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {stderr.decode()[-300:]}")
    server = nats_servers.server(f'tls {{ cert_file: "{cert}", key_file: "{key}" }}')
    tls_url = server.url(tls_ca=str(cert)).replace("nats://", "tls://")
    await _runs_a_task(tls_url)
    with pytest.raises(ConfigurationError, match="CERTIFICATE_VERIFY_FAILED"):  # an unknown CA
        await NatsBackend.from_url(server.url(connect_timeout="0.5").replace("nats://", "tls://")).open()
