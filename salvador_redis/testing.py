"""The conformance suite's back doors for `RedisBackend`, as a test-class mixin.

They write around the backend (a corrupt record, a lease that expires now), so they live
in this testing module and never on the production class:

    class TestRedisConformance(RedisHooks, BackendConformance): ...

`open_second_instance` needs the server URL: set `self.redis_url` in your fixture.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from salvador_core.task import Claim
from salvador_redis.backend import RedisBackend


class RedisHooks:
    """Back doors into a Redis backend's keys."""

    redis_url: str

    async def corrupt_record(self, backend: RedisBackend, task_id: str, raw: bytes) -> None:
        """Overwrite the stored record's data of `task_id` with `raw`."""
        workflow = await backend._workflow(task_id)
        if workflow is None:
            raise KeyError(f"no task {task_id!r} to overwrite; create it first")
        await backend._exec("HSET", backend._base(workflow) + "t:" + task_id, "data", raw)

    async def expire_lease(self, backend: RedisBackend, claim: Claim) -> None:
        """Make the current lease on the task of `claim` expire now (no-op without one)."""
        workflow = await backend._workflow(claim.task_id)
        if workflow is not None:
            await backend._exec("ZADD", backend._base(workflow) + "leases", "XX", 0, claim.task_id)

    async def open_second_instance(self, backend: RedisBackend) -> Any:
        """Its own connections to the same server and prefix, as a second process has."""
        parts = urlsplit(self.redis_url)
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "prefix"])
        url = urlunsplit(parts._replace(query=query))
        other = RedisBackend.from_url(url, prefix=backend.prefix)
        await other.open()
        return other
