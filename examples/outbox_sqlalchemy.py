"""The outbox pattern with SQLAlchemy: an order row and its workflow task in ONE transaction.

    python examples/outbox_sqlalchemy.py [postgresql://postgres@127.0.0.1:5432/test]

The order and the task that ships it commit together or not at all: a rolled-back order
leaves no task behind, and a committed one is shipped even if this process dies right after
the commit. Needs `pip install -e '.[postgres]' 'sqlalchemy[asyncio]>=2.0'` and a server.
"""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from salvador_core import Engine, StepContext, Workflow

URL = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/test"

ship = Workflow("ship-order")


@ship.step()
async def pack(ctx: StepContext) -> dict[str, str]:
    print(f"  packing order {ctx.json()['order_id']}")
    return {"parcel": f"P-{ctx.json()['order_id']}"}


@ship.step()
async def send(ctx: StepContext) -> str:
    print(f"  sending parcel {ctx.results['pack']['parcel']}")
    return "sent"


async def place_order(engine: Engine, db: AsyncSession, order_id: str, *, fail: bool) -> str:
    """Insert the order and submit its task in the session's transaction."""
    await db.execute(
        text("INSERT INTO outbox_example_orders (id, status) VALUES (:id, 'placed')"), {"id": order_id}
    )
    task_id = await engine.submit("ship-order", {"order_id": order_id}, connection=db)
    if fail:
        raise RuntimeError("payment declined")  # the whole transaction rolls back
    return task_id


async def main() -> None:
    sa = create_async_engine(URL.replace("postgresql://", "postgresql+asyncpg://", 1))
    async with sa.begin() as conn:
        await conn.execute(
            text("CREATE TABLE IF NOT EXISTS outbox_example_orders (id text PRIMARY KEY, status text)")
        )
        await conn.execute(text("DELETE FROM outbox_example_orders"))
    async with Engine.from_url(f"{URL}?schema=outbox_example", workflows=[ship]) as engine:
        worker = asyncio.create_task(engine.run(handle_signals=False))
        async with AsyncSession(sa) as db, db.begin():
            kept = await place_order(engine, db, "A-1", fail=False)
        print(f"order A-1 committed with task {kept}")
        try:
            async with AsyncSession(sa) as db, db.begin():
                dropped = await place_order(engine, db, "B-2", fail=True)
        except RuntimeError as exc:
            print(f"order B-2 rolled back ({exc})")
            dropped = None
        for _ in range(200):
            task = await engine.get_task(kept)
            if task is not None and task.status.terminal:
                break
            await asyncio.sleep(0.05)
        assert task is not None
        print(f"task {kept}: {task.status}, results {task.results}")
        assert dropped is None
        print(f"tasks stored: {len((await engine.list_tasks()).tasks)} (B-2's never existed)")
        engine.stop()
        await worker
    await sa.dispose()


if __name__ == "__main__":
    asyncio.run(main())
