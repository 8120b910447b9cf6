"""The JSON twins of the pages: cursor paging that keeps the filters (over HTTP against a
real server), the time-range filter on every backend and the refusal of bad filter values
(the app in process, on real backends)."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime

import httpx
from markupsafe import escape

from salvador_core import Engine
from salvador_core.dashboard import create_app
from salvador_core.dashboard.app import PAGE_SIZE
from salvador_core.task import utcnow
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


# -- the time-range filter, in process (the app on a real backend, no server process) ------


async def _submit_pending(engine: Engine, count: int) -> list[str]:
    return [await engine.submit("dash-ok", {"n": n}, delay=3600) for n in range(count)]


async def _moment_between() -> datetime:
    """A moment at least 5 ms after every id made so far and before every id made next, so
    that it falls between two batches at the milliseconds ids hold."""
    await asyncio.sleep(0.005)
    moment = utcnow()
    await asyncio.sleep(0.005)
    return moment


def _iso_ms(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


async def _pages(client: httpx.AsyncClient, path: str, params: dict[str, str]) -> list[list[str]]:
    """The ids of every page of a listing's JSON twin, following each page's "next" link."""
    pages: list[list[str]] = []
    response = await client.get(path, params=params)
    while True:
        assert response.status_code == 200, response.text
        doc = response.json()
        pages.append([t["id"] for t in doc["data"]["tasks"]])
        link = re.search(r'class="next" href="([^"]+)"', doc["html"])
        assert (link is None) == (doc["data"]["cursor"] is None)
        if link is None:
            return pages
        response = await client.get("/api" + link.group(1).replace("&amp;", "&"))


def test_time_range_lists_exactly_the_tasks_created_in_it_page_by_page(any_backend_url: str) -> None:
    """On every backend: the range starts the listing at a synthetic cursor (the id prefix
    of `from`) and stops at `to`, and the pager carries the range along."""

    async def scenario() -> None:
        app = create_app(Engine.from_url(any_backend_url, workflows=workflows, observers=[],
                                         durability="off"))
        engine = await app.state.dashboard.ready()
        try:
            before = await _submit_pending(engine, 3)
            start = await _moment_between()
            inside = await _submit_pending(engine, PAGE_SIZE + 5)
            end = await _moment_between()
            after = await _submit_pending(engine, 3)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
                both = {"from": _iso_ms(start), "to": _iso_ms(end)}
                in_range = await _pages(client, "/api/tasks", {**both, "workflow": "dash-ok",
                                                              "status": "pending"})
                assert in_range == [sorted(inside)[:PAGE_SIZE], sorted(inside)[PAGE_SIZE:]]
                since = await _pages(client, "/api/tasks", {"from": _iso_ms(start)})
                assert since == [sorted(inside + after)[:PAGE_SIZE], sorted(inside + after)[PAGE_SIZE:]]
                until = await _pages(client, "/api/tasks", {"to": _iso_ms(end)})
                assert until == [sorted(before + inside)[:PAGE_SIZE], sorted(before + inside)[PAGE_SIZE:]]
                everything = sorted(before + inside + after)
                assert await _pages(client, "/api/tasks", {"from": "1h"}) == [everything[:PAGE_SIZE],
                                                                             everything[PAGE_SIZE:]]
                assert await _pages(client, "/api/tasks", {"to": "1h"}) == [[]]
                assert await _pages(client, "/api/tasks", {**both, "id": before[0]}) == [[]]
                assert await _pages(client, "/api/tasks", {**both, "id": inside[0]}) == [[inside[0]]]
                assert await _pages(client, "/api/dead-letters", both) == [[]]
                page = (await client.get("/api/tasks", params=both)).json()
                assert page["data"]["range"] == {"from": _iso_ms(start).replace("+00:00", "Z"),
                                                 "to": _iso_ms(end).replace("+00:00", "Z")}
                assert "Tasks created between" in page["html"]
        finally:
            await engine.close()

    run_async(scenario)


def test_bad_filter_values_are_refused_with_the_reason() -> None:
    """A 400 from the JSON twins; on the page, the form as filled in with the reason beside
    it, nothing listed and no refresh."""
    cases = [
        ({"from": "yesterday"}, "from='yesterday' is not a time"),
        ({"to": "90"}, "to='90' is not a time (an age needs a unit)"),
        ({"from": "2024-02-30T10:00"}, "from='2024-02-30T10:00' is not a time"),
        ({"from": "1h", "to": "2h"}, "is after to"),
        ({"status": "sleeping"}, "unknown status 'sleeping'"),
    ]

    async def scenario() -> list[tuple[str, httpx.Response]]:
        app = create_app(Engine.from_url("memory://", workflows=workflows, observers=[], durability="off"))
        engine = await app.state.dashboard.ready()
        responses = []
        try:
            await _submit_pending(engine, 1)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
                for params, _ in cases:
                    for path in ("/api/tasks", "/api/dead-letters", "/tasks", "/dead-letters"):
                        responses.append((path, await client.get(path, params=params)))
        finally:
            await engine.close()
        return responses

    responses = iter(run_async(scenario))
    for params, message in cases:
        for path, response in (next(responses) for _ in range(4)):
            assert response.status_code == 400, (path, params)
            if path.startswith("/api/"):
                assert message in response.json()["error"], (path, params)
                continue
            assert escape(message) in response.text, (path, params)
            assert 'role="alert"' in response.text
            assert "data-refresh" not in response.text  # a refused filter is not polled
            assert 'class="id"' not in response.text  # nothing listed
            for key in ("from", "to"):
                if key in params:  # the form keeps what was typed
                    assert f'name="{key}" value="{escape(params[key])}"' in response.text
