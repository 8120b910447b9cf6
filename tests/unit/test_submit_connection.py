"""`Engine.submit(..., connection=...)` needs a backend that offers `TransactionalSubmit`."""

from __future__ import annotations

import pytest

from salvador_core import ConfigurationError, Engine, Workflow
from salvador_core.protocols import TransactionalSubmit


@pytest.mark.asyncio
async def test_submit_on_a_callers_connection_is_refused_by_a_backend_without_submit_in() -> None:
    wf = Workflow("w").step("s", lambda ctx: None)
    async with Engine.from_url("memory://", workflows=[wf]) as engine:
        assert not isinstance(engine.backend, TransactionalSubmit)
        with pytest.raises(ConfigurationError) as info:
            await engine.submit(wf, b"{}", connection=object())
        message = str(info.value)
        assert "MemoryBackend cannot store a task in a caller's transaction (connection=...)" in message
        assert "submit without it, or use a backend that can (PostgreSQL)" in message
        assert (await engine.list_tasks()).tasks == [], "a refused submit stored the task"
