"""Writes issued in one turn of the event loop, sent as one statement.

On PostgreSQL a write costs a round trip and a commit (a WAL flush: with
`synchronous_commit = on` an fsync), whatever the size of the write. A worker running many
tasks at once issues their checkpoints and settles in bursts: a batch claim starts its runs
together, and their writes come due together; a producer serving many requests submits in
bursts too. `Coalesced` collects the writes of one kind (submits, checkpoints or settles)
issued during one turn of the event loop and sends them as one statement over
`unnest($1::text[], ...)`: one round trip and one commit for the group.

Nothing is weakened by it. Each write in the group is checked on its own row exactly as the
single statement checks it (a checkpoint's and a settle's `version` fence, a settle's lease
receipt, a submit's unique id and idempotency key), the group's statement reports each
task's outcome, and each caller hears its own (`ConflictError` is raised for that caller
alone). No caller hears of success before the group's COMMIT; if the statement fails, every
caller in the group gets the error and nothing was written. A lone write (the common case
on an idle worker) goes out as the single-row statement, one turn of the loop later than it
would have alone.

Two writes of one task never share a statement (the second starts the next group), and a
group's rows are sent in id order, so two groups that overlap lock their rows in the same
order and cannot deadlock each other. As with any statement of this backend, a caller
that stops waiting (cancelled) does not stop its write: the group is sent all the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")

_Write = tuple[tuple[Any, ...], "asyncio.Future[Any]"]


class Coalesced(Generic[_T]):
    """One kind of write with its two statements: `single` takes one write's arguments ($1
    the task id) and returns at most one row; `many` takes the same arguments as arrays,
    one element per task, and returns one row per task with its `id`. `outcome` turns a
    task's row (None: the single statement returned none) into what its caller gets."""

    def __init__(self, db: Callable[[], Any], single: str, many: str, outcome: Callable[[Any], _T]) -> None:
        self._db = db
        self._single = single
        self._many = many
        self._outcome = outcome
        self._group: dict[str, _Write] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def write(self, args: tuple[Any, ...]) -> _T:
        """Send `args` (the task id first) with the other writes of this turn of the loop;
        returns this write's outcome."""
        loop = asyncio.get_running_loop()
        group = self._group
        if group is None or args[0] in group:
            if group is not None:
                self._send()  # a second write of the same task goes in the next group
            group = self._group = {}
            loop.call_soon(self._send_group, group)
        future: asyncio.Future[_T] = loop.create_future()
        group[args[0]] = (args, future)
        return await future

    def _send_group(self, group: dict[str, _Write]) -> None:
        if self._group is group:
            self._send()

    def _send(self) -> None:
        group, self._group = self._group, None
        if not group:
            return
        task = asyncio.get_running_loop().create_task(self._statement(list(group.values())))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _statement(self, writes: list[_Write]) -> None:
        try:
            if len(writes) == 1:
                args = writes[0][0]
                outcomes = {args[0]: self._outcome(await self._db().fetchrow(self._single, *args))}
            else:
                writes.sort(key=lambda w: str(w[0][0]))  # lock rows in id order
                columns = [list(column) for column in zip(*(args for args, _ in writes), strict=True)]
                rows = await self._db().fetch(self._many, *columns)
                outcomes = {row["id"]: self._outcome(row) for row in rows}
        except BaseException as exc:
            for _, future in writes:
                if future.done():
                    continue  # its caller stopped waiting
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for args, future in writes:
            if not future.done():
                future.set_result(outcomes[args[0]])
