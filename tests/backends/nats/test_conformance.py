"""The whole conformance suite against the shared NATS server, one fresh stream and bucket
per test. The back doors live here, not in `NatsBackend`: they write around its checks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from nats.js import errors as jx

from salvador_core.task import Claim
from salvador_core.testing import BackendConformance
from salvador_nats import NatsBackend


class TestNatsConformance(BackendConformance):
    capabilities = frozenset({"atomic", "durable", "shared"})

    @pytest_asyncio.fixture
    async def backend(self, nats_url: str, nats_names: tuple[str, str]) -> AsyncIterator[NatsBackend]:
        stream, bucket = nats_names
        self.url = f"{nats_url}?stream={stream}&bucket={bucket}&publish_grace=2"
        async with NatsBackend.from_url(self.url) as backend:
            yield backend

    async def open_second_instance(self, backend: NatsBackend) -> NatsBackend:
        """Its own connection to the same stream and bucket, as a second process has."""
        other = NatsBackend.from_url(self.url)
        await other.open()
        return other

    async def corrupt_record(self, backend: NatsBackend, task_id: str, raw: bytes) -> None:
        """Put `raw` as the record's value, bypassing the fence and the encoder."""
        await backend.kv.put(f"t.{task_id}", raw)

    async def expire_lease(self, backend: NatsBackend, claim: Claim) -> None:
        """What the server does when AckWait runs out, now: the delivery is nak'ed (so it
        is redelivered at once) and the record stops naming it as holder, as a deadline
        past would tell the holder itself (a compare-and-set rewrite of the same bytes, so
        the holder's ack, extend and release fail)."""
        key = f"t.{claim.task_id}"
        for _ in range(10):
            found = await backend._lookup(claim.task_id)  # t.<id>, or s.<id> before any write
            if found is None or found.gone:
                break
            try:
                await backend.records.write(key, found.data, expected=found.revision)
                break
            except jx.KeyWrongLastSequenceError:
                continue  # written meanwhile: rewrite what is there now
        await backend.nc.publish(claim.receipt.partition(" ")[2], b"-NAK")
        await backend.nc.flush()
