"""The dashboard in a real browser (Debian's Chromium through Playwright) against a real
`salvador dashboard` server on SQLite and on the shared Redis server: every page loads,
filters narrow (the time range too), requeue/discard/cancel change the task as the page
then shows, hostile names stay text, and views (the completions chart too) refresh without
a reload."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from playwright.sync_api import expect

from salvador_core import Engine, TaskStatus
from salvador_core.dashboard.views import CompletionChart
from tests.dashboard.app import HOSTILE, HOSTILE_RESULT, TRACE_ID, Seeded, complete, workflows
from tests.dashboard.conftest import run_async, stored
from tests.dashboard.servers import ROOT, Servers

IMAGES = ROOT / "docs" / "images"


def _rows(page: Any, selector: str = "#live tbody tr") -> list[str]:
    return [row.inner_text() for row in page.locator(selector).all()]


def _chart(page: Any, workflow: str) -> Any:
    return page.locator(f"figure.chart[data-workflow='{workflow}']")


def _id_time(task_id: str, shift_ms: int = 0) -> str:
    """The creation time an id holds (its first 12 hex digits: epoch ms), ISO 8601."""
    made = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=int(task_id[:12], 16))
    return (made + timedelta(milliseconds=shift_ms)).isoformat(timespec="milliseconds")


def test_every_page_loads_and_shows_the_seeded_tasks(page: Any, servers: Servers, backend_url: str,
                                                     seeded: Seeded) -> None:
    server = servers.dashboard(backend_url)
    page.goto(server.url + "/")
    overview = page.locator("table.overview")
    fail_row = overview.locator("tr[data-workflow='dash-fail']")
    assert fail_row.locator("td.dead").inner_text() == "1"
    ok_row = overview.locator("tr[data-workflow='dash-ok']")
    assert ok_row.locator("td.queued").inner_text() == "0"  # the pending one is delayed an hour

    summaries = {name: _chart(page, name).locator(".chart-summary").inner_text()
                 for name in ("dash-ok", "dash-fail")}
    assert summaries == {"dash-ok": "1 completed in the last hour; peak 1 per minute",
                         "dash-fail": "none completed in the last hour"}
    assert _chart(page, "dash-fail").locator("rect.bar").count() == 60

    page.click("nav >> text=Tasks")
    assert len(_rows(page)) == 4
    page.click("nav >> text=Dead letters")
    dead = _rows(page)
    assert len(dead) == 1
    assert seeded.failed in dead[0]
    assert "explode step always fails" in dead[0]

    page.click(f"a:text('{seeded.failed}')")
    assert page.locator("dd.workflow").inner_text() == "dash-fail"
    assert page.locator("table.steps tbody tr").count() == 2
    assert "done" in page.locator("table.steps tbody tr").nth(0).inner_text()
    assert "failed" in page.locator("table.steps tbody tr").nth(1).inner_text()
    traceback = page.locator(".failure pre").first.inner_text()
    assert "ValueError: the explode step always fails <i>here</i>" in traceback
    assert page.errors == []


def test_filters_narrow_the_task_list(page: Any, servers: Servers, backend_url: str, seeded: Seeded) -> None:
    server = servers.dashboard(backend_url)
    page.goto(server.url + "/tasks")
    page.fill("input[name=workflow]", "dash-ok")
    page.click("form.filters button")
    rows = _rows(page)
    assert len(rows) == 2
    assert all("dash-ok" in r for r in rows)

    page.select_option("select[name=status]", "pending")
    page.click("form.filters button")
    rows = _rows(page)
    assert len(rows) == 1
    assert seeded.pending in rows[0]

    page.goto(server.url + "/tasks")
    page.fill("input[name=id]", seeded.failed)
    page.click("form.filters button")
    rows = _rows(page)
    assert len(rows) == 1
    assert seeded.failed in rows[0]

    page.select_option("select[name=status]", "completed")  # the id, but not that status
    page.click("form.filters button")
    assert _rows(page) == []
    assert "No task matches" in page.locator("#live").inner_text()

    page.goto(server.url + "/tasks")
    page.fill("input[name=from]", "yesterday")
    page.click("form.filters button")
    assert "from='yesterday' is not a time" in page.locator("p[role=alert]").inner_text()
    assert _rows(page) == []
    assert page.locator("input[name=from]").input_value() == "yesterday"
    assert page.errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    page.errors.clear()
    page.fill("input[name=from]", _id_time(seeded.pending))  # submitted after the other three
    page.click("form.filters button")
    rows = _rows(page)
    assert len(rows) == 1
    assert seeded.pending in rows[0]
    assert "Tasks created since" in page.locator("p.range").inner_text()
    page.fill("input[name=from]", "1h")
    page.fill("input[name=to]", _id_time(seeded.pending, -1))
    page.click("form.filters button")
    earlier = sorted([seeded.completed, seeded.failed, seeded.hostile])
    assert sorted(r.split()[0] for r in _rows(page)) == earlier
    assert page.errors == []


def test_requeue_from_a_chosen_step_shows_the_task_pending(page: Any, servers: Servers, backend_url: str,
                                                           seeded: Seeded) -> None:
    server = servers.dashboard(backend_url)
    page.goto(f"{server.url}/tasks/{seeded.failed}")
    page.select_option("select[name=from_step]", "1")  # restart at 'prepare', not at 'explode'
    page.click("button[name=requeue]")
    assert "Requeued" in page.locator("p.notice").inner_text()
    assert page.locator("span.status").first.inner_text() == "pending"
    assert "0 of 2 step(s) done" in page.locator("dl.facts").inner_text()
    task = stored(backend_url, seeded.failed)
    assert task is not None
    assert task.status is TaskStatus.PENDING
    assert task.step == 0
    assert task.results == {}
    assert page.errors == []


def test_discard_from_dead_letters_deletes_the_task(page: Any, servers: Servers, backend_url: str,
                                                    seeded: Seeded) -> None:
    server = servers.dashboard(backend_url)
    page.goto(server.url + "/dead-letters")
    page.locator(f"tr[data-task='{seeded.failed}'] button[name=discard]").click()
    page.wait_for_url("**/dead-letters?discarded=*")
    assert "No dead letters" in page.locator("#live").inner_text()
    assert stored(backend_url, seeded.failed) is None
    page.goto(server.url + "/")
    assert page.locator("tr[data-workflow='dash-fail']").count() == 0


def test_cancel_of_a_pending_task(page: Any, servers: Servers, sqlite_url: str,
                                  seeded_sqlite: Seeded) -> None:
    server = servers.dashboard(sqlite_url)
    page.goto(f"{server.url}/tasks/{seeded_sqlite.pending}")
    page.click("button[name=cancel]")
    assert page.locator("span.status").first.inner_text() == "cancelled"
    assert page.locator("button[name=cancel]").count() == 0
    task = stored(sqlite_url, seeded_sqlite.pending)
    assert task is not None
    assert task.status is TaskStatus.CANCELLED


def test_hostile_workflow_name_and_result_render_as_text(page: Any, servers: Servers, backend_url: str,
                                                         seeded: Seeded) -> None:
    server = servers.dashboard(backend_url, "--show-payloads")
    for path in ("/", f"/tasks/{seeded.hostile}", "/tasks", f"/tasks/{seeded.failed}"):
        page.goto(server.url + path)
        page.wait_for_timeout(100)
        assert page.evaluate("window.__pwned") is None, path
        assert page.locator("script").count() == 1, path  # only dashboard.js
    page.goto(server.url + "/")
    assert page.locator("tr", has_text=HOSTILE).count() == 1
    page.goto(f"{server.url}/tasks/{seeded.hostile}")
    assert page.locator("dd.workflow").inner_text() == HOSTILE
    page.locator("table.steps summary").first.click()
    assert HOSTILE_RESULT.replace('"', '\\"') in page.locator("table.steps pre").first.inner_text()
    assert page.locator("img").count() == 0


def test_views_and_the_chart_refresh_without_reloading(page: Any, servers: Servers, backend_url: str,
                                                       seeded: Seeded) -> None:
    server = servers.dashboard(backend_url)
    page.goto(server.url + "/")
    page.evaluate("window.__same_document = true")
    queued = page.locator("tr[data-workflow='dash-fail'] td.queued")
    assert queued.inner_text() == "0"
    summary = _chart(page, "dash-ok").locator(".chart-summary")
    assert summary.inner_text() == "1 completed in the last hour; peak 1 per minute"

    async def submit_two() -> None:
        engine = Engine.from_url(backend_url, workflows=workflows, observers=[], durability="off")
        async with engine:
            for n in range(2):
                await engine.submit("dash-fail", {"n": n})

    run_async(submit_two)
    run_async(lambda: complete(backend_url, 3))  # its worker runs dash-ok only
    expect(summary).to_contain_text("4 completed in the last hour", timeout=10_000)  # polls every 3 s
    expect(queued).to_have_text("2")
    assert page.evaluate("window.__same_document") is True
    assert "updated" in page.locator("#refresh-state").inner_text()

    # The bars say what the caption says: one a minute, the busiest one the plot's height.
    bars = _chart(page, "dash-ok").locator("rect.bar").evaluate_all(
        "bars => bars.map(b => [Number(b.dataset.count), Number(b.getAttribute('height'))])")
    counts = [count for count, _ in bars]
    assert len(counts) == 60
    assert sum(counts) == 4  # 1 seeded + 3 (two minutes' bars when a minute turned meanwhile)
    assert summary.inner_text() == f"4 completed in the last hour; peak {max(counts)} per minute"
    assert max(height for _, height in bars) == CompletionChart.BOTTOM - CompletionChart.TOP
    assert all((height > 0) == (count > 0) for count, height in bars)
    assert _chart(page, "dash-ok").locator("svg").get_attribute("aria-labelledby") == (
        _chart(page, "dash-ok").locator("figcaption").get_attribute("id"))

    # The JSON twin carries the same numbers as its fragment draws.
    doc = httpx.get(server.url + "/api/overview").json()
    row = next(r for r in doc["data"] if r["workflow"] == "dash-ok")
    assert len(row["completions"]) == 60
    assert row["completed_last_hour"] == sum(row["completions"]) == 4
    assert row["peak_per_minute"] == max(row["completions"])
    figure = re.search(r"<figure class=\"chart\" data-workflow=\"dash-ok\">.*?</figure>", doc["html"], re.S)
    assert figure is not None
    assert [int(c) for c in re.findall(r'data-count="(\d+)"', figure.group(0))] == row["completions"]
    assert page.errors == []


def test_trace_id_links_to_the_tracing_ui(page: Any, servers: Servers, sqlite_url: str,
                                          seeded_sqlite: Seeded) -> None:
    server = servers.dashboard(sqlite_url, "--tracing-url", "http://tracing.test/trace/{trace_id}")
    page.goto(f"{server.url}/tasks/{seeded_sqlite.completed}")
    link = page.locator("a.trace")
    assert link.inner_text() == TRACE_ID
    assert link.get_attribute("href") == f"http://tracing.test/trace/{TRACE_ID}"
    assert "<b>test</b>" in page.locator("table.meta").inner_text()


def test_dashboard_mounted_inside_another_app(page: Any, servers: Servers, sqlite_url: str,
                                             seeded_sqlite: Seeded) -> None:
    server = servers.mounted(sqlite_url, "/ops/salvador")
    page.goto(server.url + "/")
    assert page.locator("tr[data-workflow='dash-fail']").count() == 1
    page.click("nav >> text=Dead letters")
    assert page.url.startswith(server.url + "/dead-letters")
    page.click(f"a:text('{seeded_sqlite.failed}')")
    page.click("button[name=requeue]")  # the CSRF cookie's path is the mount path
    assert page.url.startswith(f"{server.url}/tasks/{seeded_sqlite.failed}")
    assert page.locator("span.status").first.inner_text() == "pending"
    assert page.errors == []


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
def test_screenshots_of_overview_and_task_page(page: Any, servers: Servers, backend_url: str,
                                               seeded: Seeded, tmp_path: Path) -> None:
    """The screenshots of docs/dashboard.md: written to docs/images/ with
    SALVADOR_UPDATE_SCREENSHOTS=1, else to a temporary folder (so a test run leaves the
    working tree as it was)."""
    server = servers.dashboard(backend_url, "--show-payloads")
    images = IMAGES if os.environ.get("SALVADOR_UPDATE_SCREENSHOTS") == "1" else tmp_path
    images.mkdir(parents=True, exist_ok=True)
    page.goto(server.url + "/")
    overview = images / "dashboard-overview.png"
    page.screenshot(path=str(overview), full_page=True)
    page.goto(server.url + "/tasks?" + urlencode({"workflow": "dash-ok", "from": "1h"}))
    tasks = images / "dashboard-tasks.png"
    page.screenshot(path=str(tasks), full_page=True)
    page.goto(f"{server.url}/tasks/{seeded.failed}")
    page.locator("table.steps summary").first.click()
    task_page = images / "dashboard-task.png"
    page.screenshot(path=str(task_page), full_page=True)
    for image in (overview, tasks, task_page):
        assert Path(image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
