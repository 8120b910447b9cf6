"""Every reply this process waits for: the answers to requests (JetStream API calls, KV
writes and publishes, which the server acknowledges) and the deliveries of pull requests
to JetStream consumers.

Requests: nats-py's request path spends, per request, a NUID, a random token, a
done-callback and an `asyncio.wait_for` (a timer). Here one wildcard subscription
(`<inbox>.*`) routes each answer by its last subject token, a counter, to the future
waiting for it, and one sweep a second fails the requests whose answer is overdue (all
have the same timeout, so the oldest are the first in line). Requests and pull requests
are queued by `publish`, which does what `nc.publish` does at a third of its cost.

Pulls: nats-py's pull subscription shares one inbox between concurrent `fetch` calls, so a
message meant for one waiter can sit unread in the shared queue while its AckWait runs out.
(Deliveries keep their stream subject, so they cannot be routed by an inbox token.) Here
every pull request gets its own inbox subscription: its messages go to the request that
asked for them, and one that arrives after its requester gave up (cancelled, timed out) is
handed back at once with a `-NAK`, never held. The inbox stays subscribed until the request
has expired on the server, so nothing can be delivered to an inbox nobody reads. A pull's
send time is kept, so a lease can be measured from before the server could have started
its AckWait clock.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats import errors as nx
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from salvador_nats.layout import HEADERS

STATUS = "Status"

#: How long a request waits for its reply (the JetStream context's own timeout), give or
#: take the sweep's period.
REQUEST_TIMEOUT = 10.0
SWEEP_PERIOD = 1.0


@dataclass(eq=False)
class Pull:
    """One outstanding pull request: its messages arrive on `items`, then a None."""

    remaining: int
    sent_at: float  # epoch seconds on the backend's clock, taken before the request was published
    expires_at: float  # monotonic time after which the server sends nothing more
    items: asyncio.Queue[Msg | None] = field(default_factory=asyncio.Queue)
    open: bool = True
    finished: bool = False
    sub: Subscription | None = None


class Inbox:
    """Sends requests and pull requests and routes their replies; one per connection."""

    def __init__(self, nc: Client, clock: Callable[[], float]) -> None:
        self.nc = nc
        self.clock = clock
        self.prefix = nc.new_inbox()
        self._cut = len(self.prefix) + 1
        self._next = 0
        #: Requests waiting for their answer, oldest first: token -> (future, deadline).
        self._replies: dict[str, tuple[asyncio.Future[Msg], float]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._pulls: set[Pull] = set()
        self._sub: Subscription | None = None
        self.background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Subscribe to the inbox; the subscription is renewed by the client on reconnects."""
        self._sub = await self.nc.subscribe(f"{self.prefix}.*", cb=self._answer)
        _route_at_once(self._sub, self._route)
        self._sweeper = asyncio.create_task(self._sweep(), name="salvador-nats-request-timeouts")

    async def stop(self) -> None:
        """End every pull, fail every request still waiting, send what is still to be sent
        (naks, unsubscribes), and unsubscribe."""
        for pull in list(self._pulls):
            pull.items.put_nowait(None)
            self._finish(pull)
        self._pulls.clear()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
        for reply, _ in self._replies.values():
            if not reply.done():
                reply.set_exception(nx.ConnectionClosedError())
        self._replies.clear()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        sub, self._sub = self._sub, None
        if sub is not None and not self.nc.is_closed:
            try:
                await sub.unsubscribe()
            except nx.Error:
                pass  # the connection is going away: so is the subscription

    async def request(self, subject: str, payload: bytes, *, headers: dict[str, str] | None = None) -> Msg:
        """Publish `payload` to `subject` and wait for the one reply (`nats.errors.TimeoutError`
        after `REQUEST_TIMEOUT` seconds, `NoRespondersError` when nothing listens on `subject`)."""
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Msg] = loop.create_future()
        self._replies[token] = (reply, loop.time() + REQUEST_TIMEOUT)
        try:
            await publish(self.nc, subject, payload, f"{self.prefix}.{token}", headers)
            msg = await reply
        finally:
            self._replies.pop(token, None)
        if not msg.data and msg.headers and msg.headers.get(STATUS) == "503":
            raise nx.NoRespondersError
        return msg

    async def pull(self, api_subject: str, *, batch: int, wait: float) -> Pull:
        """Ask the consumer at `api_subject` for up to `batch` messages within `wait`
        seconds (0: only what is there now), on an inbox of the request's own."""
        inbox = self.nc.new_inbox()
        pull = Pull(remaining=batch, sent_at=self.clock(), expires_at=time.monotonic() + max(wait, 0) + 1.0)

        def deliver(msg: Msg) -> None:
            self._deliver(pull, msg)

        async def route(msg: Msg) -> None:
            deliver(msg)

        pull.sub = await self.nc.subscribe(inbox, cb=route)
        _route_at_once(pull.sub, deliver)
        self._pulls.add(pull)
        body: dict[str, Any] = {"batch": batch}
        if wait <= 0:
            body["no_wait"] = True
        else:
            body["expires"] = max(int(wait * 1e9), 1_000_000)
        await publish(self.nc, api_subject, json.dumps(body).encode(), inbox, None)
        return pull

    def close(self, pull: Pull) -> None:
        """The requester is done with `pull`: a message it received but will not use, and
        whatever still arrives for it, is handed back. The inbox is dropped once the
        request is over on the server."""
        pull.open = False
        while not pull.items.empty():
            msg = pull.items.get_nowait()
            if msg is not None:
                self.give_back(msg)
        if pull.finished:
            self._finish(pull)
        else:
            delay = max(0.0, pull.expires_at - time.monotonic())
            asyncio.get_running_loop().call_later(delay, self._finish, pull)

    def give_back(self, msg: Msg) -> None:
        """`-NAK` a delivery nobody will use, so it is redelivered now (fire and forget:
        if it is lost, the AckWait brings the message back all the same)."""
        if msg.reply:
            self.spawn(self.nc.publish(msg.reply, b"-NAK"))

    async def _answer(self, msg: Msg) -> None:
        self._route(msg)

    def _route(self, msg: Msg) -> None:
        waiting = self._replies.pop(msg.subject[self._cut :], None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)  # else: its requester gave up; nothing waits for it

    async def _sweep(self) -> None:
        """Fail the requests whose answer is overdue: the oldest are the first in line."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_PERIOD)
            now = loop.time()
            overdue = []
            for token, (_, deadline) in self._replies.items():
                if deadline > now:
                    break
                overdue.append(token)
            for token in overdue:
                reply, _ = self._replies.pop(token)
                if not reply.done():
                    reply.set_exception(nx.TimeoutError())

    def _deliver(self, pull: Pull, msg: Msg) -> None:
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is not None and not msg.data:
            if status == "100":  # an idle heartbeat: the request is still alive
                return
            pull.finished = True
            pull.items.put_nowait(None)
            if not pull.open:
                self._finish(pull)
            return
        if not pull.open:
            self.give_back(msg)  # its requester gave up: never hold it
            return
        pull.items.put_nowait(msg)
        pull.remaining -= 1
        if pull.remaining <= 0:
            pull.finished = True
            pull.items.put_nowait(None)

    def _finish(self, pull: Pull) -> None:
        self._pulls.discard(pull)
        sub, pull.sub = pull.sub, None
        if sub is not None and not self.nc.is_closed:
            self.spawn(sub.unsubscribe())

    def spawn(self, coro: Any) -> None:
        """Run `coro` in the background, kept referenced until done; `stop` waits for it."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed nak changes nothing


async def publish(
    nc: Client, subject: str, payload: bytes, reply: str, headers: dict[str, str] | None
) -> None:
    """`nc.publish(subject, payload, reply=reply, headers=headers)`, without most of its
    per-call work.

    A record read or write is a few microseconds of server work, and nats-py's `publish`
    costs about as much again in Python: it checks both subjects with a regular expression
    and builds the header block name by name (strip, a pattern match, newline translation,
    an encode each): 5.8 us per record write, where this takes 2 us. This makes the same
    checks more cheaply (subjects without blanks or line breaks; header names of this
    package's own, `layout.HEADERS`), builds the same `HPUB` command at once and queues it
    as `publish` does, through the client's command buffer. Those are internals
    (`_send_command`, `_flush_pending`, `_flush_queue`): it hands the call to `nc.publish`
    when a client lacks them, when the client is not plainly connected (reconnecting,
    draining or closed: `publish` buffers or refuses), and for whatever `publish` would
    refuse or rewrite (a bad subject, a payload over the server's limit, another header
    name, a value with a line break)."""
    flush_queue = getattr(nc, "_flush_queue", None)
    usable = nc.is_connected and not nc.is_draining and len(payload) <= nc.max_payload
    if usable and flush_queue is not None and _lean(type(nc)):
        command = _command(subject, reply, payload, headers)
        if command is not None:
            nc.stats["out_msgs"] += 1
            nc.stats["out_bytes"] += len(payload)
            await nc._send_command(command)
            if flush_queue.empty():
                await nc._flush_pending()  # wake the client's writer, as `publish` does
            return
    await nc.publish(subject, payload, reply=reply, headers=headers)


#: `_lean`'s answer per client class.
_LEAN: dict[type, bool] = {}


def _lean(client_class: type) -> bool:
    """Whether the client class's internals still have the shape `publish` relies on
    (coroutine functions; `_send_command(self, command, priority=False)`,
    `_flush_pending(self)`): a nats-py release that changes them gets the plain
    `nc.publish` path, not a broken one. Asked once per class."""
    known = _LEAN.get(client_class)
    if known is None:
        known = _LEAN[client_class] = _has_lean_shape(client_class)
    return known


def _has_lean_shape(client_class: type) -> bool:
    send = getattr(client_class, "_send_command", None)
    flush = getattr(client_class, "_flush_pending", None)
    if not (inspect.iscoroutinefunction(send) and inspect.iscoroutinefunction(flush)):
        return False
    try:
        inspect.signature(send).bind(None, b"")
        inspect.signature(flush).bind(None)
    except (TypeError, ValueError):
        return False
    return True


def _command(subject: str, reply: str, payload: bytes, headers: dict[str, str] | None) -> bytes | None:
    """The `PUB` or `HPUB` command `nc.publish` would queue (`reply` "" for none, as an
    ack has: only `PUB` takes that); None for anything it would refuse or rewrite."""
    both = subject + reply
    if not subject or " " in both or "\t" in both or "\r" in both or "\n" in both:
        return None
    if not headers:
        if not reply:
            return b"PUB %b %d\r\n%b\r\n" % (subject.encode(), len(payload), payload)
        return b"PUB %b %b %d\r\n%b\r\n" % (subject.encode(), reply.encode(), len(payload), payload)
    if not reply:
        return None  # headers without a reply: nothing here sends such a message
    block = "NATS/1.0\r\n"
    for name, value in headers.items():
        if name not in HEADERS or "\r" in value or "\n" in value:
            return None
        block += name + ": " + value.strip() + "\r\n"  # `+`, not a format: a str enum stays its value
    head = (block + "\r\n").encode()
    size = len(head)
    return b"HPUB %b %b %d %d\r\n%b%b\r\n" % (
        subject.encode(), reply.encode(), size, size + len(payload), head, payload
    )


class _AtOnce(asyncio.Queue):  # type: ignore[type-arg]
    """Stands in for a subscription's queue of messages waiting for its callback: each
    message is handed to `route` as the client reads it, and none is ever queued.

    nats-py queues every message for a subscription with a callback, and a task of the
    subscription's awaits the callback for each: two task switches between the reply's
    arrival and the requester's wake-up, a sixth of a record write's cost in Python. Our
    callbacks only resolve a future or queue a delivery, so they run where the client
    hands the message over. The subscription's task waits on this queue forever (it is
    always empty) and ends with the subscription; `join()` returns at once, as nothing is
    left unprocessed. A callback that raises is logged: it must not stop the client's
    reader."""

    def __init__(self, sub: Subscription, route: Callable[[Msg], None]) -> None:
        super().__init__()
        # Weak: the subscription holds this queue, and a cycle would keep every finished
        # pull's subscription, queue and route for the cycle collector.
        self._sub = weakref.ref(sub)
        self._route = route

    def put_nowait(self, item: Msg) -> None:
        sub = self._sub()
        if sub is not None:
            sub._pending_size -= len(item.data)  # as the subscription's task would
        try:
            self._route(item)
        except Exception:
            logging.getLogger("salvador").exception("nats: routing a reply failed; it is dropped")


def _route_at_once(sub: Subscription, route: Callable[[Msg], None]) -> None:
    """Have `sub`'s messages handed to `route` as they are read (`_AtOnce`), where the
    subscription has the internals this relies on (a nats-py release that changes them
    keeps its callback path, which calls the same route)."""
    queue = getattr(sub, "_pending_queue", None)
    has_shape = isinstance(getattr(sub, "_pending_size", None), int)
    if type(queue) is asyncio.Queue and has_shape and queue.empty():
        sub._pending_queue = _AtOnce(sub, route)


def api_next(stream: str, consumer: str) -> str:
    """The subject a pull request for `consumer` of `stream` is published to."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
