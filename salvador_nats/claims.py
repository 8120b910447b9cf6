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
from collections.abc import Callable, Coroutine
from typing import Any, cast

from nats.aio.msg import Msg

from salvador_core.task import Claim
from salvador_nats.pulls import Inbox

#: Turns a delivery into a claim (or deals with it and returns None): (msg, lease, sent_at).
Take = Callable[[Msg, float, float], Coroutine[Any, Any, Claim | None]]
#: The claim `Take` would make, where it needs no round trip: made at once, nothing sent.
#: None: `Take` has more to do for this delivery.
TakeNow = Callable[[Msg, float, float], Claim | None]


class Claimer:
    """Claims of one workflow for one process, oldest delivery first."""

    def __init__(
        self, inbox: Inbox, next_subject: str, *, take: Take, take_now: TakeNow, drop: Callable[[Claim], None]
    ) -> None:
        self.inbox = inbox
        self.next_subject = next_subject  # where pull requests for ready tasks go
        self.take = take
        self.take_now = take_now
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
        items = pull.items
        got: list[Msg] = []
        try:
            while len(got) < batch:
                # A batch mostly arrives in one read: what is there already is taken without
                # a timer (`wait_for` costs a task and a timer per message).
                if items.empty():
                    msg = await asyncio.wait_for(items.get(), wait + 2.0)
                else:
                    msg = items.get_nowait()
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
        """Each delivery turned into a claim (or dealt with), together: at once where that
        needs no round trip (`take_now`), else in a task of its own, so that the reads go
        out together. If that is cancelled, every delivery not dealt with is handed back and
        the claims made are forgotten; deliveries whose turn failed are handed back, and if
        every turn failed, the first failure is raised."""
        now = [self._now(msg, lease, sent_at) for msg in got]
        if None not in now:
            return cast(list[Claim], now)
        start = asyncio.get_running_loop().create_task
        works = [start(self._outcome(msg, lease, sent_at)) if made is None else _made(made)
                 for msg, made in zip(got, now, strict=True)]
        try:
            # In delivery order: the reads went out together and come back in about that
            # order, so most are done by the time their turn comes (no callback each, as a
            # gather would schedule).
            outcomes = [await work for work in works]
        except BaseException:
            for work in works:
                work.cancel()
            await asyncio.gather(*works, return_exceptions=True)
            for msg, work in zip(got, works, strict=True):
                self._undo(msg, work)
            raise
        claims: list[Claim] = []
        failure: Exception | None = None
        for msg, outcome in zip(got, outcomes, strict=True):
            if isinstance(outcome, Exception):
                failure = failure or outcome
                self.inbox.give_back(msg)
            elif outcome is not None:
                claims.append(outcome)
        if not claims and failure is not None:
            raise failure
        return claims

    def _now(self, msg: Msg, lease: float, sent_at: float) -> Claim | None:
        """`take_now`'s claim, or None (also if it failed: `take` then deals with it)."""
        try:
            return self.take_now(msg, lease, sent_at)
        except Exception:
            return None

    async def _outcome(self, msg: Msg, lease: float, sent_at: float) -> Claim | Exception | None:
        """`take`'s claim for `msg`, or the exception its turn failed with."""
        try:
            return await self.take(msg, lease, sent_at)
        except Exception as exc:
            return exc

    def _undo(self, msg: Msg, work: asyncio.Future[Claim | Exception | None]) -> None:
        if work.cancelled() or work.exception() is not None:
            self.inbox.give_back(msg)
            return
        outcome = work.result()
        if isinstance(outcome, Claim):
            self.drop(outcome)
        if outcome is not None:
            self.inbox.give_back(msg)


def _made(claim: Claim) -> asyncio.Future[Claim | Exception | None]:
    """A claim made already, as a finished future beside the ones still being made."""
    done: asyncio.Future[Claim | Exception | None] = asyncio.get_running_loop().create_future()
    done.set_result(claim)
    return done
