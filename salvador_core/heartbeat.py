"""The heartbeat of one run: renews its lease and watches for what should stop it.

While a run owns its task, a beat every lease/3 extends the claim and re-reads the record:
a lost lease or another owner means the run must stop (`on_lost`; the cause is kept in
`lost` for the run to report through its observer, so the heartbeat logs no line of its
own about it); a cancel request means the running step should stop (`on_cancel`). The
heartbeat is a timer that starts a beat task only when a beat is due or asked for
(`request`, from a step's `ctx.heartbeat()`, any thread); a task waiting out the interval
for every run cost more than the run's steps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from salvador_core.errors import LeaseLostError
from salvador_core.observe import describe
from salvador_core.protocols import TaskQueue, TaskStore
from salvador_core.task import Claim


class Heartbeat:
    """Keeps `claim` alive for `owner` while started; `claim` is always the latest lease."""

    def __init__(
        self,
        queue: TaskQueue,
        store: TaskStore,
        claim: Claim,
        *,
        lease: float,
        owner: str,
        on_lost: Callable[[], None],
        on_cancel: Callable[[], None],
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.queue = queue
        self.store = store
        self.claim = claim
        self.lease = lease
        self.owner = owner
        self.on_lost = on_lost
        self.on_cancel = on_cancel
        self.log = log
        self.watch_cancel = True  # off while compensating: compensations run despite a cancel
        self.lost: str | None = None  # why the task is lost to this run, once a beat found it
        self._beat: asyncio.Task[None] | None = None  # the beat in flight
        self._timer: asyncio.TimerHandle | None = None  # when the next beat is due
        self._beating = False  # from start() until finish()/stop() or the task is lost
        self._again = False  # a beat was asked for while one was in flight
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Begin beating: the run has just taken ownership."""
        self._loop = asyncio.get_running_loop()
        self._beating = True
        self._later()

    def finish(self) -> None:
        """The run's final write is under way: a beat failing from here on (the final ack
        ends the lease) is no news."""
        self._beating = False

    def stop(self) -> asyncio.Task[None] | None:
        """Stop beating; returns the beat in flight (cancelled), if any, to be awaited."""
        self._beating = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._beat is not None:
            self._beat.cancel()
        return self._beat

    def request(self) -> None:
        """Beat now (callable from any thread, e.g. a sync step's)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._requested)

    def _later(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(self.lease / 3, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._beating and self._beat is None:
            self._beat = asyncio.ensure_future(self._run())

    def _requested(self) -> None:
        if not self._beating:
            return
        if self._beat is not None:
            self._again = True
            return
        if self._timer is not None:
            self._timer.cancel()
        self._due()

    async def _run(self) -> None:
        try:
            keep_beating = await self._once()
        finally:
            self._beat = None
        if not keep_beating:
            self._beating = False  # lost: nothing to renew, not even when a step asks
        elif self._beating:
            if self._again:
                self._again = False
                self._due()
            else:
                self._later()

    async def _once(self) -> bool:
        """One beat; False once the task is lost to this run."""
        interval = self.lease / 3
        try:
            self.claim = await asyncio.wait_for(self.queue.extend(self.claim, lease=self.lease), interval)
            current = await asyncio.wait_for(self.store.get(self.claim.task_id), interval)
        except LeaseLostError as exc:
            self._lose(f"its lease could not be renewed ({exc.detail or 'lost'})")
            return False
        except asyncio.TimeoutError:
            if self._beating:
                self.log.error(
                    "task %s: heartbeat failed: the backend did not answer within %.1fs",
                    self.claim.task_id,
                    interval,
                )
            return True
        except Exception as exc:
            if self._beating:
                self.log.error("task %s: heartbeat failed (%s)", self.claim.task_id, describe(exc))
            return True
        if current is None:
            self._lose("its record is gone (discarded, purged, or lost by the backend)")
            return False
        if current.owner is not None and current.owner != self.owner:
            self._lose(f"another worker owns it now ({current.owner})")
            return False
        if current.cancel_requested and self.watch_cancel:
            self.on_cancel()
        return True

    def _lose(self, cause: str) -> None:
        self.lost = cause
        self.on_lost()
