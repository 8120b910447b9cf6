"""A producer that dies in the middle of `submit`: `python producer_app.py URL DIR N`.

For each i < N it forks a child that submits one task (workflow `quick`, idempotency key
`key-<i>`) and stops at one of three points, by i % 3: (0) after the idempotency-key entry,
before the publish; (1) after the publish, before the record; (2) after the record, before
`submit` returns. The child writes DIR/gap-<i> when it is there; this parent then SIGKILLs
it and reaps it, and goes on with the next. Forking a process that has already imported
everything makes a hundred kills take seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from salvador_core.task import Task, new_task_id
from salvador_nats import backend as nats_backend
from salvador_nats.backend import NatsBackend


def pause_in(directory: Path, i: int) -> None:
    (directory / f"gap-{i}").write_text(str(os.getpid()))
    time.sleep(3600)  # until SIGKILLed


def child(url: str, directory: Path, i: int) -> None:
    point = i % 3
    publish = NatsBackend._publish
    create_record = NatsBackend._create_record

    async def paused_publish(self: NatsBackend, *args: Any, **kwargs: Any) -> Any:
        if point == 0:
            pause_in(directory, i)
        return await publish(self, *args, **kwargs)

    async def paused_create(self: NatsBackend, *args: Any, **kwargs: Any) -> Any:
        if point == 1:
            pause_in(directory, i)
        stored = await create_record(self, *args, **kwargs)
        if point == 2:
            await self.nc.flush()
            pause_in(directory, i)
        return stored

    nats_backend.NatsBackend._publish = paused_publish  # type: ignore[method-assign]
    nats_backend.NatsBackend._create_record = paused_create  # type: ignore[method-assign]

    async def submit() -> None:
        async with NatsBackend.from_url(url) as backend:
            await backend.submit(Task(id=new_task_id(), workflow="quick", idempotency_key=f"key-{i}"))

    asyncio.run(submit())


def main() -> None:
    url, directory, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                child(url, directory, i)
            finally:
                os._exit(1)  # a child that returned did not stop where it should have
        marker = directory / f"gap-{i}"
        deadline = time.monotonic() + 30
        while not marker.exists():
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                sys.exit(f"child {i} exited ({status}) before reaching its gap")
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                sys.exit(f"child {i} never reached its gap")
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print(f"killed {n} producers")


if __name__ == "__main__":
    main()
