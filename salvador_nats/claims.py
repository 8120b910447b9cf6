"""One workflow's claims in one process: a batch of deliveries pulled at once and each
turned into a claim.

A claim costs a share of a pull request and, per delivery, one round trip (the record
read). The worker asks for as many claims as it has free slots (`claim_many`), so one pull
request brings them all and their record reads go out together: the requests of a batch
share the event loop's turns and the connection's writes. A pull asks for exactly the
number of claims wanted, so nothing is pulled that no slot will run; a delivery that cannot
be claimed is dealt with (`take`), and one fetched for a claimer that gave up (cancelled)
is handed back at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from salvador_core.task import Claim
from salvador_nats.pulls import Inbox

#: Turns a delivery into a claim (or deals with it and returns None): (msg, lease, sent_at).
Take = Callable[[Msg, float, float], Awaitable[Claim | None]]


class Claimer:
    """Claims of one workflow for one process, oldest delivery first."""

    def __init__(self, inbox: Inbox, next_subject: str, *, take: Take, drop: Callable[[Claim], None]) -> None:
        self.inbox = inbox
        self.next_subject = next_subject  # where pull requests for ready tasks go
        self.take = take
        self.drop = drop  # forgets a claim made but never handed out

    async def claim_many(self, limit: int, lease: float, wait: float) -> list[Claim]:
        """Up to `limit` claims, waiting up to `wait` seconds (in a pull request) for the first."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(0.0, wait)
        while True:
            got, sent_at = await self._fetch(limit, give_up - loop.time())
            if got:
                claims = await self._take_all(got, lease, sent_at)
                if claims:
                    return claims
            if loop.time() >= give_up - 0.005:
                return []
            if not got:
                await asyncio.sleep(min(0.05, max(0.0, give_up - loop.time())))  # a refused pull

    async def _fetch(self, limit: int, wait: float) -> tuple[list[Msg], float]:
        """Deliveries: what is there now, up to `limit`; with nothing there, one pull request
        waits (on the server) up to `wait` for the next message."""
        got, sent_at = await self._request(limit, 0.0)
        if not got and wait > 0.001:
            got, sent_at = await self._request(1, wait)
        return got, sent_at

    async def _request(self, batch: int, wait: float) -> tuple[list[Msg], float]:
        """One pull request: the deliveries it brings (up to `batch`) and its send time."""
        pull = await self.inbox.pull(self.next_subject, batch=batch, wait=wait)
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
                self.inbox.give_back(msg)
            raise
        finally:
            self.inbox.close(pull)
        return got, pull.sent_at

    async def _take_all(self, got: list[Msg], lease: float, sent_at: float) -> list[Claim]:
        """Each delivery turned into a claim (or dealt with), together. If that is cancelled
        or fails for every delivery, every delivery not dealt with is handed back and the
        claims made are forgotten; deliveries whose turn failed alone are handed back."""
        works = [asyncio.ensure_future(self.take(msg, lease, sent_at)) for msg in got]
        try:
            outcomes = await asyncio.gather(*works, return_exceptions=True)
        except BaseException:
            for work in works:
                work.cancel()
            await asyncio.gather(*works, return_exceptions=True)
            for msg, work in zip(got, works, strict=True):
                self._undo(msg, work)
            raise
        claims: list[Claim] = []
        failure: BaseException | None = None
        for msg, outcome in zip(got, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failure = failure or outcome
                self.inbox.give_back(msg)
            elif outcome is not None:
                claims.append(outcome)
        if not claims and failure is not None:
            raise failure
        return claims

    def _undo(self, msg: Msg, work: asyncio.Future[Claim | None]) -> None:
        if work.cancelled() or work.exception() is not None:
            self.inbox.give_back(msg)
            return
        claim = work.result()
        if claim is not None:
            self.drop(claim)
            self.inbox.give_back(msg)
