"""The conformance suite: one set of checks every salvador backend must pass.

Subclass `BackendConformance` in a test module, provide an async fixture `backend` that
yields a fresh, opened, isolated backend, and run pytest::

    class TestAcme(BackendConformance):
        capabilities = frozenset({"atomic"})

        @pytest_asyncio.fixture
        async def backend(self):
            async with AcmeBackend.from_url("acme://localhost/test") as backend:
                yield backend

A backend declaring `durable` or `shared` also overrides `open_second_instance(backend)`,
returning a new, opened instance on the same storage (see `ConformanceBase`).

`StoreChecks`, `QueueChecks`, `BatchClaimChecks` (the optional `claim_many`) and
`EngineChecks` are the parts, for a backend that wants to run them separately. Checks
cannot be overridden; optional capabilities are declared (`CAPABILITIES`) and what they
skip is reported. The suite is a pytest plugin (`salvador_core.testing.plugin`) and marks
its own async tests.
"""

from salvador_core.testing.base import AWKWARD_NAMES, CAPABILITIES, ConformanceBase
from salvador_core.testing.batch_checks import BatchClaimChecks
from salvador_core.testing.engine_checks import EngineChecks
from salvador_core.testing.queue_checks import QueueChecks
from salvador_core.testing.store_checks import StoreChecks


class BackendConformance(StoreChecks, QueueChecks, BatchClaimChecks, EngineChecks):
    """Every check of the suite: store, queue (batch claims included) and engine end to end."""


__all__ = [
    "AWKWARD_NAMES",
    "CAPABILITIES",
    "BackendConformance",
    "BatchClaimChecks",
    "ConformanceBase",
    "EngineChecks",
    "QueueChecks",
    "StoreChecks",
]
