"""The worker loop: claim loops and their slots, the runs they start, upkeep, signals, drain.

For each workflow, up to `MAX_CLAIMERS_PER_WORKFLOW` claim loops share `concurrency`
slots: a loop takes a slot, waits for a task, starts a `Run` for it, and the slot is given
back when the run ends. On a backend that leases several tasks in one round trip
(`BatchClaims`), one loop takes one slot (waiting for it) and every other slot free at that
moment, claims up to that many tasks in one call, and gives back the slots it got no task
for: one round trip per batch instead of one per task, and never a claimed task that no
slot is free to run. Upkeep runs every lease (at most a minute): orphan repair on a
split backend, and retention. Stopping (SIGTERM, SIGINT, `stop()`, cancelling `run()`)
drains: claim loops waiting for work stop at once, running steps get `drain_timeout` to
finish, the rest are interrupted and their tasks released for other workers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from salvador_core.observe import Observer, describe
from salvador_core.protocols import Backend, BatchClaims, TaskCounts
from salvador_core.run import ActiveRun, Run, RunEnv
from salvador_core.settings import Settings
from salvador_core.split import SplitBackend
from salvador_core.stepcall import StepThreads
from salvador_core.task import Claim
from salvador_core.workflow import Workflow

_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+

#: How many claim loops one workflow gets at most; more only add idle connections.
MAX_CLAIMERS_PER_WORKFLOW = 4
#: How many claim loops one workflow gets on a backend with batch claims. One: it takes
#: every slot freed while its last claim was in flight, so the runs that finish together
#: are replaced by one claim, and their writes go out together too. Measured on PostgreSQL:
#: two or four loops, or one that claims at most half or a quarter of the slots at a time,
#: split the batches, cost more CPU per task and gained no throughput.
BATCH_CLAIMERS_PER_WORKFLOW = 1


class Worker:
    """Runs the registered workflows of one engine in this process until stopped."""

    def __init__(
        self,
        backend: Backend,
        workflows: Mapping[str, Workflow],
        settings: Settings,
        *,
        max_payload_bytes: int,
        observer: Observer,
        log: logging.Logger,
        purge: Callable[[float], Awaitable[int]],
    ) -> None:
        self.backend = backend
        self.workflows = workflows  # the engine's own map: workflows registered later count
        self.settings = settings
        self.observer = observer
        self.log = log
        self.purge = purge
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.threads = StepThreads()
        self.env = RunEnv(backend, settings.lease, max_payload_bytes, observer, self.id, self.threads, log)
        self._stopping = asyncio.Event()
        self._runs: dict[Run, asyncio.Task[None]] = {}
        # Claim loops now waiting for a slot or for a task: stopping cancels them at once.
        self._waiting: set[asyncio.Task[Any]] = set()
        self._batch: BatchClaims | None = backend if isinstance(backend, BatchClaims) else None
        # Outer bound of one claim call: a dead connection must never hang a worker.
        self._claim_timeout = settings.poll_interval + max(5.0, settings.lease / 3)

    def active(self) -> list[ActiveRun]:
        """The runs in progress in this process, one per claimed task."""
        return [run.snapshot() for run in list(self._runs)]

    def stop(self) -> None:
        """Ask `run()` to drain and return; also when it was started but has not begun yet."""
        self._stopping.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Claim and run tasks until stopped; the backend must be open."""
        loop = asyncio.get_running_loop()
        signals = _install_signal_handlers(loop, self._stopping.set) if handle_signals else []
        settings = self.settings
        claimers: list[asyncio.Task[None]] = []
        for wf in self.workflows.values():
            slots = asyncio.Semaphore(settings.concurrency)
            loops = BATCH_CLAIMERS_PER_WORKFLOW if self._batch is not None else MAX_CLAIMERS_PER_WORKFLOW
            for _ in range(min(settings.concurrency, loops)):
                claimers.append(asyncio.create_task(self._claim_loop(wf, slots)))
        upkeep = asyncio.create_task(self._upkeep())
        self.observer.worker_started(
            self.id, list(self.workflows), concurrency=settings.concurrency, lease=settings.lease
        )
        try:
            await self._stopping.wait()
        finally:
            self._stopping.set()
            for sig in signals:
                loop.remove_signal_handler(sig)
            await asyncio.shield(self._drain(claimers, upkeep))
            # Armed afresh only once this run is over, so that a stop() issued before the
            # run got going is not lost, and the worker can be run again.
            self._stopping = asyncio.Event()

    async def _drain(self, claimers: list[asyncio.Task[None]], upkeep: asyncio.Task[None]) -> None:
        upkeep.cancel()
        # A claimer waiting for a task or a slot holds nothing: stop it now, whatever
        # `poll_interval` is. (A task leased at this very instant comes back when its lease
        # expires, as if this worker had died.) The others are between a claim and its run.
        for t in self._waiting:
            t.cancel()
        _, late = await asyncio.wait(claimers, timeout=self.settings.poll_interval + 1.0)
        for t in late:
            t.cancel()
        await asyncio.gather(*claimers, upkeep, return_exceptions=True)
        handlers = list(self._runs.values())
        if handlers:
            self.log.info(
                "draining %d running task(s), up to %.1fs", len(handlers), self.settings.drain_timeout
            )
            _, pending = await asyncio.wait(handlers, timeout=self.settings.drain_timeout)
            for run in list(self._runs):
                run.interrupt("shutdown")
            if pending:
                await asyncio.wait(pending, timeout=max(self.settings.lease / 3, 5.0))
        self.threads.stop()
        self.observer.worker_stopped(self.id)

    async def _claim_loop(self, wf: Workflow, slots: asyncio.Semaphore) -> None:
        """Take a slot (waiting for one) and every other slot free at that moment, claim
        that many tasks, start a run for each, and give back the slots left unused."""
        failures = 0
        me = asyncio.current_task()
        assert me is not None
        waiting, backend = self._waiting, self.backend
        while not self._stopping.is_set():
            waiting.add(me)
            try:
                await slots.acquire()
            finally:
                waiting.discard(me)
            held = 1
            # A batch never asks for more tasks than there are slots to run them now: a
            # claimed task never waits out part of its lease for a slot.
            while self._batch is not None and held < self.settings.concurrency and not slots.locked():
                await slots.acquire()  # free: returns at once
                held += 1
            claims: list[Claim] = []
            waiting.add(me)
            try:
                claims = await self._claim(wf, held)
                failures = 0
            except asyncio.CancelledError:
                for _ in range(held):
                    slots.release()
                raise
            except Exception as exc:
                failures += 1
                await self._claim_failed(wf, exc, failures)
            finally:
                waiting.discard(me)
            if self._stopping.is_set():
                await asyncio.gather(*(_quietly(backend.release(claim), self.log) for claim in claims))
                claims = []
            for _ in range(held - len(claims)):
                slots.release()
            for claim in claims:
                self._start(wf, claim, slots)

    def _start(self, wf: Workflow, claim: Claim, slots: asyncio.Semaphore) -> None:
        """Run `claim` in a task of its own, which gives its slot back when it ends. (Not
        inline in the claim loop: a local there would keep the last run alive until the
        next claim.)"""
        self.observer.claimed(claim)
        run = Run(self.env, wf, claim)
        handler = run.start()
        self._runs[run] = handler
        handler.add_done_callback(functools.partial(self._finished, run, slots))

    async def _claim(self, wf: Workflow, limit: int) -> list[Claim]:
        """Up to `limit` claims on `wf`'s tasks: one `claim_many` call when the backend
        offers it, else one `claim`. Bounded by an outer timeout: a dead connection must
        never hang a worker."""
        settings = self.settings
        lease, wait = settings.lease, settings.poll_interval
        if self._batch is not None:
            many = self._batch.claim_many(wf.name, limit, lease=lease, wait=wait)
            return await _within(self._claim_timeout, many)
        one = self.backend.claim(wf.name, lease=lease, wait=wait)
        claim = await _within(self._claim_timeout, one)
        return [] if claim is None else [claim]

    async def _claim_failed(self, wf: Workflow, exc: Exception, failures: int) -> None:
        """Log a failed claim and back off before the next one (unless stopping)."""
        if isinstance(exc, asyncio.TimeoutError):
            self.log.error(
                "claiming %r failed: the backend did not answer within %.1fs; retrying in %.1fs",
                wf.name,
                self._claim_timeout,
                _backoff(failures),
            )
        else:
            self.log.error(
                "claiming %r failed (%s); retrying in %.1fs", wf.name, describe(exc), _backoff(failures)
            )
        await _sleep_unless(self._stopping, _backoff(failures))

    def _finished(self, run: Run, slots: asyncio.Semaphore, _: object) -> None:
        self._runs.pop(run, None)
        slots.release()

    async def _upkeep(self) -> None:
        """Periodic upkeep: queue tasks a crash left unqueued (split backends only) and purge
        finished tasks past `retention`."""
        settings = self.settings
        interval = max(1.0, min(settings.lease, 60.0))
        while True:
            await asyncio.sleep(interval)
            try:
                if isinstance(self.backend, TaskCounts):
                    self.observer.queue_stats(await self.backend.stats())
                if isinstance(self.backend, SplitBackend):
                    await self.backend.repair_orphans(
                        workflows=list(self.workflows), older_than=settings.lease
                    )
                if settings.retention is not None:
                    purged = await self.purge(settings.retention)
                    if purged:
                        self.log.info("retention: purged %d finished task(s)", purged)
            except Exception as exc:
                self.log.error("maintenance failed (%s); trying again later", describe(exc))


T = TypeVar("T")


async def _within(seconds: float, call: Awaitable[T]) -> T:
    """`await call`, raising TimeoutError after `seconds`. On Python 3.11+ the call runs in
    the awaiting task (`asyncio.timeout`); `wait_for` would wrap it in a task of its own,
    a large share of a claim's own cost on a fast backend."""
    if _timeout is None:
        return await asyncio.wait_for(call, seconds)
    async with _timeout(seconds):
        return await call


def _backoff(failures: int) -> float:
    return float(min(0.1 * 2 ** min(failures, 10), 5.0))


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def _quietly(coro: Awaitable[Any], logger: logging.Logger) -> None:
    try:
        await coro
    except Exception as exc:
        logger.debug("ignored during shutdown: %s", describe(exc))


def _install_signal_handlers(
    loop: asyncio.AbstractEventLoop, stop: Callable[[], None]
) -> list[signal.Signals]:
    """SIGTERM and SIGINT drain the worker; the ones that cannot be handled here are named
    in a warning: the process would then end without draining on them, and the caller
    should stop the worker itself (`stop()`, or cancelling `run()`)."""
    if threading.current_thread() is not threading.main_thread():
        _signals_not_handled("SIGTERM and SIGINT", "run() is not in the main thread")
        return []
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError) as exc:
            # NotImplementedError: a loop without signal support (Windows' proactor loop).
            # RuntimeError: the loop is closed, or the signal cannot be caught here.
            _signals_not_handled(sig.name, describe(exc))
        else:
            installed.append(sig)
    return installed


def _signals_not_handled(which: str, why: str) -> None:
    logging.getLogger("salvador").warning(
        "run(): %s will not drain this worker (%s); stop it with stop() or by cancelling "
        "run(), or pass handle_signals=False to handle signals yourself",
        which,
        why,
    )
