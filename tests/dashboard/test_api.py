"""The JSON twins of the pages, over HTTP against a real server: cursor paging that keeps
the filters."""

from __future__ import annotations

import re

import httpx

from salvador_core import Engine
from salvador_core.dashboard.app import PAGE_SIZE
from tests.dashboard.app import Seeded, workflows
from tests.dashboard.conftest import run_async
from tests.dashboard.servers import Servers


def test_task_list_pages_with_a_cursor_and_keeps_the_filters(servers: Servers, sqlite_url: str,
                                                             seeded_sqlite: Seeded) -> None:
    async def submit_many() -> None:
        engine = Engine.from_url(sqlite_url, workflows=workflows, observers=[], durability="off")
        async with engine:
            for n in range(PAGE_SIZE + 5):
                await engine.submit("dash-ok", {"n": n}, delay=3600)

    run_async(submit_many)
    server = servers.dashboard(sqlite_url)
    first = httpx.get(server.url + "/api/tasks", params={"workflow": "dash-ok", "status": "pending"}).json()
    assert len(first["data"]["tasks"]) == PAGE_SIZE
    assert first["data"]["cursor"] is not None
    link = re.search(r'class="next" href="([^"]+)"', first["html"])
    assert link is not None
    next_path = link.group(1).replace("&amp;", "&")
    assert "workflow=dash-ok" in next_path
    assert "status=pending" in next_path
    second = httpx.get(server.url + next_path)
    assert second.status_code == 200
    rows = re.findall(r'<td class="id"><a href="/tasks/([0-9a-f]+)"', second.text)
    assert len(rows) == 6  # 55 submitted here + the seeded pending one, 50 on the first page
    seen = {t["id"] for t in first["data"]["tasks"]}
    assert seen.isdisjoint(rows)
    assert 'class="next"' not in second.text
