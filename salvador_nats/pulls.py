"""Pull requests to JetStream consumers, each answered on an inbox of its own.

nats-py's pull subscription shares one inbox between concurrent `fetch` calls, so a message
meant for one waiter can sit unread in the shared queue while its AckWait runs out. Here
every request gets its own inbox subscription: its messages go to the request that asked
for them, and one that arrives after its requester gave up (cancelled, timed out) is handed
back at once with a `-NAK`, never held. The inbox stays subscribed until the request has
expired on the server, so nothing can be delivered to an inbox nobody reads. The request's
send time is kept, so a lease can be measured from before the server could have started
its AckWait clock.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

STATUS = "Status"


@dataclass(eq=False)
class Pull:
    """One outstanding pull request: its messages arrive on `items`, then a None."""

    remaining: int
    sent_at: float  # epoch seconds, taken before the request was published
    expires_at: float  # monotonic time after which the server sends nothing more
    items: asyncio.Queue[Msg | None] = field(default_factory=asyncio.Queue)
    open: bool = True
    finished: bool = False
    sub: Subscription | None = None


class PullRouter:
    """Sends pull requests and routes their replies; one per connection."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.live: set[Pull] = set()
        self.background: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        """End every request and send what is still to be sent (naks, unsubscribes)."""
        for pull in list(self.live):
            pull.items.put_nowait(None)
            self._finish(pull)
        self.live.clear()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)

    async def request(self, api_subject: str, *, batch: int, wait: float) -> Pull:
        """Ask the consumer at `api_subject` for up to `batch` messages within `wait`
        seconds (0: only what is there now)."""
        inbox = self.nc.new_inbox()
        pull = Pull(remaining=batch, sent_at=time.time(), expires_at=time.monotonic() + max(wait, 0) + 1.0)

        async def route(msg: Msg) -> None:
            self._route(pull, msg)

        pull.sub = await self.nc.subscribe(inbox, cb=route)
        self.live.add(pull)
        body: dict[str, object] = {"batch": batch}
        if wait <= 0:
            body["no_wait"] = True
        else:
            body["expires"] = max(int(wait * 1e9), 1_000_000)
        await self.nc.publish(api_subject, json.dumps(body).encode(), reply=inbox)
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
            self.spawn(self._publish(msg.reply, b"-NAK"))

    def _route(self, pull: Pull, msg: Msg) -> None:
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
            self.give_back(msg)
            return
        pull.items.put_nowait(msg)
        pull.remaining -= 1
        if pull.remaining <= 0:
            pull.finished = True
            pull.items.put_nowait(None)

    def _finish(self, pull: Pull) -> None:
        self.live.discard(pull)
        sub, pull.sub = pull.sub, None
        if sub is not None and not self.nc.is_closed:
            self.spawn(sub.unsubscribe())

    def spawn(self, coro: object) -> None:
        """Run `coro` in the background, kept referenced until done; `stop` waits for it."""
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self.background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed nak or unsubscribe changes nothing

    async def _publish(self, subject: str, data: bytes) -> None:
        await self.nc.publish(subject, data)


def api_next(stream: str, consumer: str) -> str:
    """The subject a pull request for `consumer` of `stream` is published to."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
