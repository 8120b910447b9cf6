"""One workflow's claims in one process: deliveries pulled ahead, claims made ahead.

A claim costs a pull and, per delivery, a round trip (the record read and the lease entry
written together). The engine runs a few claim loops per workflow, each waiting for its
claim, so claims one at a time would cap a worker at a few round trips' worth per second.
So, for leases of `PREFETCH_MIN_LEASE` or more, one pull asks for up to `PREFETCH`
deliveries, and up to `PREPARE_AHEAD` of them are made into claims while the claim loops
are busy; a claim loop then mostly finds its claim ready. Both stay in order (one claimer
still gets tasks oldest first). What no claimer takes within `lease / 10` (pulled ahead)
or `lease / 5` (made ahead) is handed back (`-NAK`) or released, so a worker whose
claimers stopped holds nothing, and a run never starts with much of its lease gone; on
`close` everything is handed back at once. Shorter leases (the conformance suite's) pull
one delivery at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from salvador_core.errors import BackendUnavailableError, LeaseLostError
from salvador_core.task import Claim
from salvador_nats.pulls import PullRouter

PREFETCH = 16
PREPARE_AHEAD = 8
PREFETCH_MIN_LEASE = 5.0

#: Turns a delivery into a claim (or deals with it and returns None): (msg, lease, sent_at).
Take = Callable[[Msg, float, float], Awaitable[Claim | None]]


class ClaimPipeline:
    """Claims of one workflow for one process, in delivery order."""

    def __init__(
        self,
        router: PullRouter,
        next_subject: str,
        *,
        take: Take,
        extend: Callable[[Claim, float], Awaitable[Claim]],
        release: Callable[[Claim], Awaitable[None]],
    ) -> None:
        self.router = router
        self.next_subject = next_subject  # where pull requests for ready tasks go
        self.take = take
        self.extend = extend
        self.release = release
        #: Deliveries pulled ahead, oldest first, with the time their pull was sent.
        self.buffer: deque[tuple[Msg, float]] = deque()
        #: Claims being made ahead: (the work, the lease it asks for, its pull time).
        self.prepared: deque[tuple[asyncio.Task[Claim | None], float, float]] = deque()

    async def claim(self, lease: float, wait: float) -> Claim | None:
        """The next claim, waiting up to `wait` seconds (in a pull request) for one."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(0.0, wait)
        while True:
            self._prepare(lease)
            if self.prepared:
                claim = await self._next_prepared(lease)
            else:
                msg, sent_at = await self._pull(give_up - loop.time(), lease)
                if msg is None:
                    if loop.time() >= give_up - 0.005:
                        return None
                    await asyncio.sleep(min(0.05, max(0.0, give_up - loop.time())))  # a refused pull
                    continue
                self._prepare(lease)  # the rest of the batch, while this one is taken
                try:
                    claim = await self.take(msg, lease, sent_at)
                except BaseException:
                    self.router.give_back(msg)
                    raise
            if claim is not None:
                return claim
            if loop.time() >= give_up and not self.buffer and not self.prepared:
                return None

    async def close(self) -> None:
        """Release the claims made ahead and hand back the deliveries pulled ahead, so
        other workers get them at once."""
        while self.prepared:
            work, _, _ = self.prepared.popleft()
            try:
                claim = await work
            except Exception:
                continue
            if claim is not None:
                await self._release_if_held(claim)
        while self.buffer:
            self.router.give_back(self.buffer.popleft()[0])

    def _prepare(self, lease: float) -> None:
        """Start making claims from deliveries pulled ahead, up to `PREPARE_AHEAD` at once;
        hand back those that waited too long to be worth a lease."""
        if lease < PREFETCH_MIN_LEASE:
            return
        max_age = lease / 10
        now = time.time()
        while self.buffer and len(self.prepared) < PREPARE_AHEAD:
            msg, sent_at = self.buffer.popleft()
            if now - sent_at > max_age:
                self.router.give_back(msg)
                continue
            work = asyncio.create_task(self._take_or_give_back(msg, lease, sent_at))
            self.prepared.append((work, lease, sent_at))

    async def _take_or_give_back(self, msg: Msg, lease: float, sent_at: float) -> Claim | None:
        try:
            return await self.take(msg, lease, sent_at)
        except BaseException:
            self.router.give_back(msg)
            raise

    async def _next_prepared(self, lease: float) -> Claim | None:
        """The oldest claim made ahead; renewed to `lease` if it was made for another."""
        work, made_for, sent_at = self.prepared.popleft()
        try:
            claim = await asyncio.shield(work)
        except asyncio.CancelledError:
            if not work.cancelled():
                self.prepared.appendleft((work, made_for, sent_at))  # for the next claimer
            raise
        if claim is not None and made_for != lease:
            claim = await self.extend(claim, lease)
        return claim

    async def _pull(self, wait: float, lease: float) -> tuple[Msg | None, float]:
        """A delivery, or None when `wait` ran out. First what is there now, up to
        `PREFETCH` of it (the rest is kept for the next claims); with nothing there, one
        pull request waits (on the server) for the next message."""
        batch = PREFETCH if lease >= PREFETCH_MIN_LEASE else 1
        got, sent_at = await self._request(batch, 0.0)
        if not got and wait > 0.001:
            got, sent_at = await self._request(1, wait)
        if not got:
            return None, sent_at
        self.buffer.extend((msg, sent_at) for msg in got[1:])
        if len(got) > 1 and len(self.buffer) == len(got) - 1:  # one watch per refill
            max_age = lease / 10
            asyncio.get_running_loop().call_later(max_age, self._hand_back_stale, max_age)
        return got[0], sent_at

    async def _request(self, batch: int, wait: float) -> tuple[list[Msg], float]:
        """One pull request: the deliveries it brings (up to `batch`) and its send time."""
        router = self.router
        pull = await router.request(self.next_subject, batch=batch, wait=wait)
        got: list[Msg] = []
        try:
            while len(got) < batch:
                msg = await asyncio.wait_for(pull.items.get(), wait + 2.0)
                if msg is None:
                    break
                got.append(msg)
        except asyncio.TimeoutError:
            pass  # no answer at all (the connection is being re-established)
        except BaseException:
            for msg in got:
                router.give_back(msg)
            raise
        finally:
            router.close(pull)
        return got, pull.sent_at

    def _hand_back_stale(self, max_age: float) -> None:
        """Give back what no claimer took in time (the claimers stopped): deliveries pulled
        ahead, and claims made ahead (released)."""
        now = time.time()
        while self.buffer and now - self.buffer[0][1] > max_age - 0.001:
            self.router.give_back(self.buffer.popleft()[0])
        while self.prepared and self.prepared[0][0].done() and now - self.prepared[0][2] > 2 * max_age:
            work, _, _ = self.prepared.popleft()
            if not work.cancelled() and work.exception() is None and (claim := work.result()) is not None:
                self.router.spawn(self._release_if_held(claim))
        if self.buffer or self.prepared:
            asyncio.get_running_loop().call_later(max_age, self._hand_back_stale, max_age)

    async def _release_if_held(self, claim: Claim) -> None:
        try:
            await self.release(claim)
        except (LeaseLostError, BackendUnavailableError):
            pass  # lost or unreachable: its AckWait brings the task back all the same
