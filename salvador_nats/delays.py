"""Delayed tasks: held back on the server with `nak(delay)`, promoted to the ready subject
when due.

JetStream 2.9 has no per-message delivery time, but a consumer redelivers a message that
was `-NAK`ed with a delay when that delay is over, on the server's clock. So a delayed task
is published to `<stream>.d.<workflow>`; its reader, one `Promoter` per workflow in each
process that claims it, naks every message that is not due yet with the time left (the
server keeps it, durably, and hands it back at its due time) and republishes each due one
to `<stream>.q.<workflow>` (the same `Nats-Msg-Id` as an immediate publish, so two promoters
racing, or a promotion repeated after a crash, queue it once within the duplicate window)
before acking it. Due messages read together are promoted in due-time order, so one
claimer gets them oldest due first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from salvador_nats.layout import HEADER_DUE, HEADER_FORMAT, HEADER_MSG_ID, HEADER_VERSION
from salvador_nats.pulls import Inbox, api_next

log = logging.getLogger("salvador.nats")

#: How long one pull request of a promoter waits for messages before it is renewed.
PULL_EXPIRY = 5.0
BATCH = 256


class Promoter:
    """Reads one workflow's delayed subject and moves due tasks to its ready subject."""

    def __init__(
        self, js: JetStreamContext, inbox: Inbox, *, stream: str, consumer: str, ready: str
    ) -> None:
        self.js = js
        self.inbox = inbox
        self.next_subject = api_next(stream, consumer)
        self.ready = ready
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Promote what is due now (so the first claim after a due time gets it), then keep
        reading in the background."""
        await self.read(wait=0)
        self.task = asyncio.create_task(self._run(), name=f"salvador-nats-promoter {self.ready}")

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.read(wait=PULL_EXPIRY)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server is away: try again shortly
                log.debug("delayed-task promoter for %s: %s", self.ready, exc)
                await asyncio.sleep(0.5)

    async def read(self, *, wait: float) -> None:
        """One pull request: handle its messages as they come, due ones in due order."""
        pull = await self.inbox.pull(self.next_subject, batch=BATCH, wait=wait)
        try:
            ended = False
            while not ended:
                first = await asyncio.wait_for(pull.items.get(), wait + 2.0)
                if first is None:
                    return
                batch = [first]
                while not pull.items.empty():
                    more = pull.items.get_nowait()
                    if more is None:
                        ended = True
                        break
                    batch.append(more)
                await self._handle(batch)
        except asyncio.TimeoutError:
            return
        finally:
            self.inbox.close(pull)

    async def _handle(self, batch: list[Msg]) -> None:
        now_ms = time.time() * 1000
        batch.sort(key=lambda m: (_due_ms(m), m.reply))
        for msg in batch:
            due = _due_ms(msg)
            if due > now_ms + 5:
                delay_ns = int((due - now_ms) * 1e6)
                await self.inbox.nc.publish(msg.reply, b"-NAK " + json.dumps({"delay": delay_ns}).encode())
                continue
            headers = {k: v for k, v in (msg.headers or {}).items() if k in (HEADER_VERSION, HEADER_FORMAT)}
            msg_id = (msg.headers or {}).get(HEADER_MSG_ID, "")
            headers[HEADER_MSG_ID] = msg_id.removesuffix(".d")
            await self.js.publish(self.ready, msg.data, headers=headers)
            await self.inbox.nc.publish(msg.reply, b"+ACK")


def _due_ms(msg: Msg) -> float:
    try:
        return float((msg.headers or {}).get(HEADER_DUE, 0))
    except ValueError:
        return 0.0
