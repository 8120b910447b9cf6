"""Calling one step or compensation function: on the loop or in a thread, under its timeout,
stoppable from outside, and contained, so that nothing a step raises can stop the worker.

A run has one `StepCaller`. `interrupt(reason)` stops the call in flight (cancel, lease
lost, shutdown) and makes the next call refuse to start; the run then acts on the reason.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import queue
import threading
from collections.abc import Callable
from typing import Any

from salvador_core.errors import StepTimeoutError
from salvador_core.observe import Observer
from salvador_core.workflow import CancelFlag, StepContext, StepFn


class Interrupted(Exception):
    """A running step was stopped from outside: reason is 'cancelled', 'lost' or 'shutdown'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StepFailed(Exception):
    """Whatever a step or compensation function raised, `BaseException`s included, carried
    out of the call as an ordinary exception: `SystemExit` from `sys.exit()` or argparse in a
    step, or `KeyboardInterrupt`, escaping an asyncio task would stop the event loop and with
    it every other task of the worker. It is that task's step failure, nothing more."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


class StepThreads:
    """The threads sync steps run in: daemon threads, started on demand, reused when idle.

    Daemon, because a sync step cannot be stopped from outside: one that ignores
    cancellation must not keep a drained worker process alive (a `ThreadPoolExecutor`'s
    threads are joined at interpreter exit). On demand, because a thread whose step overran
    its timeout is abandoned, still running: a fixed pool would fill with those and starve
    the steps of every other workflow. Abandoned threads are counted.
    """

    #: An idle thread waits this long for work before it ends.
    IDLE_SECONDS = 60.0

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._busy: set[asyncio.Future[Any]] = set()  # calls whose function is running
        self._abandoned: set[asyncio.Future[Any]] = set()  # ... that nobody waits for

    @property
    def abandoned(self) -> int:
        """Threads still running a step that was given up on (timed out, or stopped)."""
        return len(self._abandoned)

    def call(self, fn: StepFn, ctx: StepContext) -> asyncio.Future[Any]:
        """Run `fn(ctx)` in a thread; the future resolves on the loop, with `StepFailed`
        for whatever the call raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = _Job(self, loop, future, contextvars.copy_context(), fn, ctx)
        with self._lock:
            self._busy.add(future)
            start = self._idle == 0
            if start:
                self._threads += 1
            else:
                self._idle -= 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._serve, name=f"salvador-step-{self._threads}", daemon=True).start()
        return future

    def finished(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], outcome: tuple[bool, Any]
    ) -> None:
        """A call's function has returned or raised (`outcome`): resolve its future."""
        with self._lock:
            self._busy.discard(future)
            self._abandoned.discard(future)
        try:
            loop.call_soon_threadsafe(_resolve, future, outcome)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting for this result any more

    def abandon(self, future: asyncio.Future[Any]) -> int:
        """The call behind `future` goes on running in its thread though nobody waits for it
        any more. Returns how many such threads there are now (0: it had finished)."""
        with self._lock:
            if future not in self._busy:
                return 0
            self._abandoned.add(future)
            return len(self._abandoned)

    def stop(self) -> None:
        """Let idle threads end; busy ones end with their step or with the process."""
        with self._lock:
            idle = self._idle
        for _ in range(idle):
            self._jobs.put(None)

    def _serve(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                job = None
            if job is None:
                # Idle too long, or told to stop. `_idle` counts this thread unless a call
                # reserved it meanwhile (then its job is queued: stay and take it).
                with self._lock:
                    if self._idle > 0:
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            job()
            job = None  # an idle thread must not keep the call's future (and its run) alive
            with self._lock:
                self._idle += 1


class _Job:
    """One call for a thread: `fn(ctx)` in `context`, its outcome handed to `threads`.

    What a failing step raised has the step's frame in its traceback, and that frame refers
    to the frames that called it (`f_back`), this job's included: so this job lets go of
    the future and the outcome once it has handed them over. Else the future (holding the
    exception), the traceback and this frame would form a cycle, and the run up that
    traceback would wait for the cycle collector instead of being freed when it ends."""

    __slots__ = ("context", "ctx", "fn", "future", "loop", "threads")

    def __init__(
        self,
        threads: StepThreads,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        context: contextvars.Context,
        fn: StepFn,
        ctx: StepContext,
    ) -> None:
        self.threads, self.loop = threads, loop
        self.future: asyncio.Future[Any] | None = future
        self.context, self.fn, self.ctx = context, fn, ctx

    def __call__(self) -> None:
        outcome = _outcome(self.context, self.fn, self.ctx)
        future, self.future = self.future, None
        assert future is not None, "a job runs once"
        self.threads.finished(self.loop, future, outcome)
        del future, outcome


def _outcome(context: contextvars.Context, fn: StepFn, ctx: StepContext) -> tuple[bool, Any]:
    """`(True, fn(ctx))`, or `(False, StepFailed(what it raised))`, whatever it raised."""
    try:
        return True, context.run(fn, ctx)
    except BaseException as exc:  # the step's failure, whatever it is
        return False, StepFailed(exc)


def _resolve(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class StepCaller:
    """Calls a run's step and compensation functions, one at a time.

    An async function without a timeout is awaited in the run's own task (a task per step
    was a large share of the engine's work per step); `interrupt()` then cancels the run's
    task while the step is being awaited, which stops the step at its current await exactly
    as cancelling a task of its own would. An async function with a timeout gets a task of
    its own; a sync one a thread (`StepThreads`), which cannot be stopped: it is told to
    through `ctx.cancelled` and abandoned.
    """

    def __init__(self, threads: StepThreads, observer: Observer) -> None:
        self.threads = threads
        self.observer = observer
        self.handler: asyncio.Task[Any] | None = None  # the run's own task
        self.stop_reason: str | None = None
        self.cancel = CancelFlag()  # the running call's; each call gets a fresh one
        self._future: asyncio.Future[Any] | None = None
        self._in_step = False  # an async step is being awaited in `handler` itself
        self._cancelled_handler = False  # interrupt() cancelled `handler` to stop that step

    def fresh_flag(self) -> CancelFlag:
        """The cancel flag for the next call's `StepContext`."""
        self.cancel = CancelFlag()
        return self.cancel

    def interrupt(self, reason: str) -> None:
        """Stop the running call (if any) for `reason`; the first reason given wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel.set()
        if self._future is not None and not self._future.done():
            self._future.cancel()
        elif self._in_step and self.handler is not None and not self._cancelled_handler:
            self._cancelled_handler = True
            self.handler.cancel()

    async def call(self, fn: StepFn, ctx: StepContext, timeout: float | None, run_async: bool) -> Any:
        """`fn(ctx)`'s value. Raises `StepFailed` (what it raised), `StepTimeoutError`, or
        `Interrupted`; a CancelledError only when the run itself is being cancelled.
        `run_async`: whether `fn` is async (`Step` knows, from when it was built)."""
        if self.stop_reason is not None:
            raise Interrupted(self.stop_reason)
        if run_async and not timeout:
            return await self._await_here(fn, ctx)
        if run_async:
            fut: asyncio.Future[Any] = asyncio.ensure_future(_contained(fn, ctx))
        else:
            fut = self.threads.call(fn, ctx)
        self._future = fut
        try:
            value = await asyncio.wait_for(fut, timeout) if timeout else await fut
            if value is not None and inspect.isawaitable(value):
                value = await value
            return value
        except asyncio.TimeoutError:
            self.cancel.set()  # a sync step's thread cannot be killed; tell it to stop
            if not run_async:
                self._abandoned(fut, ctx, f"overran its {timeout:.1f}s timeout")
            raise StepTimeoutError(
                f"step {ctx.step!r} did not finish within its timeout of {timeout}s"
            ) from None
        except asyncio.CancelledError:
            if self.stop_reason is not None:
                if not run_async:
                    self._abandoned(fut, ctx, f"was stopped ({self.stop_reason})")
                raise Interrupted(self.stop_reason) from None
            if self._cancelling() or not fut.cancelled():
                raise  # this run itself is being cancelled
            # The step raised CancelledError of its own accord: its failure, not ours.
            raise StepFailed(asyncio.CancelledError("the step raised CancelledError")) from None
        except StepFailed:
            raise
        except BaseException as exc:
            # A sync function returning an awaitable: what awaiting it raised.
            raise StepFailed(exc) from None
        finally:
            self._future = None
            # What `fut` raised holds this frame in its traceback, and `fut` holds it: a
            # cycle that would keep the run (further up that traceback) for the collector.
            del fut

    async def _await_here(self, fn: StepFn, ctx: StepContext) -> Any:
        self._in_step = True
        try:
            pending: Any = fn(ctx)
            value = await pending
            if value is not None and inspect.isawaitable(value):
                value = await value
            return value
        except asyncio.CancelledError as exc:
            if self._cancelled_handler and self.stop_reason is not None:
                raise Interrupted(self.stop_reason) from None
            if self._cancelled_handler or self._cancelling():
                raise  # not our cancel: the run's task itself is being cancelled
            # The step raised CancelledError of its own accord: its failure, not ours.
            raise StepFailed(exc) from None
        except BaseException as exc:
            raise StepFailed(exc) from None
        finally:
            self._in_step = False
            if self._cancelled_handler:
                self._cancelled_handler = False
                # That cancel was meant for the step, not the run: withdraw it, so that
                # timeouts later in the run still tell their own cancels apart (3.11+).
                uncancel = getattr(self.handler, "uncancel", None)
                if uncancel is not None:
                    uncancel()

    def _cancelling(self) -> bool:
        """Whether the run's own task is being cancelled from outside (Python 3.11+ can
        tell; on 3.10 a CancelledError we did not cause is taken as the step's own)."""
        cancelling = getattr(self.handler, "cancelling", None)
        return bool(cancelling is not None and cancelling())

    def _abandoned(self, fut: asyncio.Future[Any], ctx: StepContext, reason: str) -> None:
        count = self.threads.abandon(fut)
        if count:
            self.observer.step_thread_abandoned(ctx.task, ctx.step, reason=reason, abandoned=count)


async def _contained(fn: StepFn, ctx: StepContext) -> Any:
    """Await an async step in a task of its own, with whatever it raises (but a cancel)
    turned into `StepFailed`: a `SystemExit` leaving a task would stop the event loop."""
    try:
        pending: Any = fn(ctx)
        value = await pending
        if value is not None and inspect.isawaitable(value):
            value = await value
        return value
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        raise StepFailed(exc) from None
