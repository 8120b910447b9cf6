"""Every `salvador` subcommand against SQLite and Redis, through click's CliRunner, with
the --json output parsed (and the human output where it is the contract)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from salvador_core import Engine
from salvador_core.backends.memory import MemoryBackend
from salvador_core.cli import WorkflowStats, _stats
from tests.cli import app
from tests.cli.support import assert_one_line_error, invoke, ok_json, run_until_finished

APP = ("--app", "tests.cli.app:workflows")


def submit(url: str, workflow: str, body: str, *extra: str) -> str:
    doc = ok_json("submit", workflow, "--body", body, "--url", url, *extra)
    assert doc["workflow"] == workflow
    return str(doc["task_id"])


def test_submit_stores_a_task_that_show_and_list_report(backend_url: str) -> None:
    # The workflow is not importable here (no --app): submit needs only its name.
    first = submit(backend_url, "billing", '{"order": 7}', "--idempotency-key", "order-7",
                   "--meta", "source=cli", "--meta", "team=ops")
    again = submit(backend_url, "billing", '{"order": 8}', "--idempotency-key", "order-7")
    assert again == first  # idempotent: the first task's id, nothing new stored

    shown = ok_json("show", first, "--url", backend_url)
    assert shown["id"] == first
    assert shown["workflow"] == "billing"
    assert shown["status"] == "pending"
    assert json.loads(shown["body"]) == {"order": 7}
    assert shown["meta"] == {"source": "cli", "team": "ops"}
    assert shown["idempotency_key"] == "order-7"

    listed = ok_json("list", "--url", backend_url)
    assert [t["id"] for t in listed["tasks"]] == [first]
    assert ok_json("list", "--status", "completed", "--url", backend_url)["tasks"] == []

    human = invoke("show", first, "--url", backend_url)
    assert human.exit_code == 0
    assert "status:          pending" in human.stdout
    assert "source = cli" in human.stdout


def test_submit_reads_the_body_from_a_file_or_stdin_and_delays(backend_url: str, tmp_path: Path) -> None:
    body_file = tmp_path / "order.json"
    body_file.write_text('{"n": 21}')
    from_file = submit(backend_url, "cli-ok", f"@{body_file}")
    from_stdin = ok_json("submit", "cli-ok", "--body", "-", "--url", backend_url, stdin='{"n": 4}')["task_id"]
    delayed = submit(backend_url, "cli-ok", '{"n": 1}', "--delay", "1h")

    assert json.loads(ok_json("show", from_file, "--url", backend_url)["body"]) == {"n": 21}
    assert json.loads(ok_json("show", from_stdin, "--url", backend_url)["body"]) == {"n": 4}
    assert ok_json("show", delayed, "--url", backend_url)["not_before"] is not None

    stats = ok_json("stats", "--url", backend_url)["workflows"]
    assert stats == [{
        "workflow": "cli-ok", "counts": {"pending": 3}, "queued": 2, "delayed": 1,
        "oldest_wait_seconds": stats[0]["oldest_wait_seconds"], "dead_letters": 0,
        "completions": [0] * 60,
    }]
    assert 0 <= stats[0]["oldest_wait_seconds"] < 60


def test_list_pages_with_the_cursor_it_prints(backend_url: str) -> None:
    ids = [submit(backend_url, "cli-ok", f'{{"n": {i}}}') for i in range(5)]
    first = ok_json("list", "--limit", "2", "--url", backend_url)
    second = ok_json("list", "--limit", "2", "--cursor", first["cursor"], "--url", backend_url)
    third = ok_json("list", "--limit", "2", "--cursor", second["cursor"], "--url", backend_url)
    pages = [first, second, third]
    assert [t["id"] for p in pages for t in p["tasks"]] == ids  # oldest first, no gap, no repeat
    assert third["cursor"] is None

    human = invoke("list", "--limit", "2", "--url", backend_url)
    assert f"more: salvador list --cursor {first['cursor']}" in human.stdout


def test_show_reports_steps_results_error_and_traceback_after_a_run(backend_url: str) -> None:
    done = submit(backend_url, "cli-ok", '{"n": 5}')
    failed = submit(backend_url, "cli-fail", "{}")
    run_until_finished(backend_url, [done, failed])

    shown = ok_json("show", done, "--url", backend_url, *APP)
    assert shown["status"] == "completed"
    assert shown["results"] == {"first": {"n": 5}, "second": {"doubled": 10}}
    assert [(s["name"], s["state"], s["result_bytes"]) for s in shown["steps"]] == [
        ("first", "done", len('{"n":5}')), ("second", "done", len('{"doubled":10}')),
    ]
    assert shown["steps_total"] == 2
    assert shown["duration_seconds"] >= 0

    broken = ok_json("show", failed, "--url", backend_url, *APP)
    assert broken["status"] == "failed"
    assert broken["dead_letter"] == "step-failed"
    assert [(s["name"], s["state"], s["attempts"]) for s in broken["steps"]] == [
        ("prepare", "done", None), ("explode", "failed", 1),
    ]
    assert broken["error"]["type"] == "builtins.ValueError"
    assert broken["error"]["step"] == "explode"
    assert "the explode step always fails" in broken["error"]["traceback"]

    human = invoke("show", failed, "--url", backend_url).stdout  # no --app: names from the record
    assert "dead letter: step-failed" in human
    assert "builtins.ValueError: the explode step always fails" in human
    assert "Traceback (most recent call last)" in human
    assert re.search(r"^2\s+explode\s+failed\s+-\s+1$", human, re.MULTILINE), human


def test_stats_counts_statuses_queue_and_dead_letters(backend_url: str) -> None:
    done = submit(backend_url, "cli-ok", '{"n": 1}')
    failed = submit(backend_url, "cli-fail", "{}")
    run_until_finished(backend_url, [done, failed])
    submit(backend_url, "cli-ok", '{"n": 2}')

    stats = {s["workflow"]: s for s in ok_json("stats", "--url", backend_url)["workflows"]}
    assert stats["cli-ok"]["counts"] == {"completed": 1, "pending": 1}
    assert stats["cli-ok"]["queued"] == 1
    assert stats["cli-fail"]["counts"] == {"failed": 1}
    assert stats["cli-fail"]["dead_letters"] == 1
    assert stats["cli-fail"]["oldest_wait_seconds"] is None
    only = ok_json("stats", "--workflow", "cli-fail", "--url", backend_url)["workflows"]
    assert [s["workflow"] for s in only] == ["cli-fail"]

    human = invoke("stats", "--url", backend_url).stdout
    assert human.splitlines()[0].split()[:3] == ["workflow", "pending", "running"]


def test_dead_letters_list_requeue_and_discard(backend_url: str) -> None:
    failed = submit(backend_url, "cli-fail", "{}")
    pending = submit(backend_url, "cli-ok", '{"n": 1}', "--delay", "1h")  # stays pending
    run_until_finished(backend_url, [failed])

    letters = ok_json("dead-letters", "list", "--url", backend_url)["tasks"]
    assert [(t["id"], t["dead_letter"]) for t in letters] == [(failed, "step-failed")]
    assert letters[0]["error"]["message"] == "the explode step always fails"

    # Requeue needs the workflow's steps: refused without --app, as a usage mistake.
    line = assert_one_line_error(invoke("dead-letters", "requeue", failed, "--url", backend_url), 2)
    assert "--app" in line
    requeued = ok_json("dead-letters", "requeue", failed, "--url", backend_url, *APP)
    assert (requeued["status"], requeued["step"]) == ("pending", 1)  # resumes at the failed step
    run_until_finished(backend_url, [failed])
    again = ok_json("dead-letters", "requeue", failed, "--from-step", "1", "--url", backend_url, *APP)
    assert again["step"] == 0
    run_until_finished(backend_url, [failed])

    # Only finished tasks can be discarded: a refused operation is exit 1.
    assert_one_line_error(invoke("dead-letters", "discard", pending, "--url", backend_url), 1)
    assert ok_json("dead-letters", "discard", failed, "--url", backend_url)["discarded"] is True
    assert_one_line_error(invoke("show", failed, "--url", backend_url), 4)
    assert_one_line_error(invoke("dead-letters", "discard", failed, "--url", backend_url), 4)


def test_cancel_a_pending_task_and_refuse_a_finished_one(backend_url: str) -> None:
    task_id = submit(backend_url, "cli-ok", '{"n": 1}')
    cancelled = ok_json("cancel", task_id, "--url", backend_url)
    assert cancelled["status"] == "cancelled"
    assert ok_json("show", task_id, "--url", backend_url)["status"] == "cancelled"
    line = assert_one_line_error(invoke("cancel", task_id, "--url", backend_url), 1)
    assert "already finished" in line
    assert_one_line_error(invoke("cancel", "0" * 32, "--url", backend_url), 4)


def test_cancel_of_a_task_with_completed_steps_needs_the_workflow(backend_url: str) -> None:
    failed = submit(backend_url, "cli-fail", "{}")
    run_until_finished(backend_url, [failed])
    ok_json("dead-letters", "requeue", failed, "--url", backend_url, *APP)  # pending at step 2
    line = assert_one_line_error(invoke("cancel", failed, "--url", backend_url), 2)
    assert "--app" in line
    assert ok_json("cancel", failed, "--url", backend_url, *APP)["status"] == "cancelled"


def test_purge_deletes_finished_tasks_older_than_the_age(backend_url: str) -> None:
    done = submit(backend_url, "cli-ok", '{"n": 1}')
    waiting = submit(backend_url, "cli-ok", '{"n": 2}', "--delay", "1h")
    run_until_finished(backend_url, [done])
    assert ok_json("purge", "--older-than", "1h", "--url", backend_url) == {"purged": 0}
    assert ok_json("purge", "--older-than", "0", "--status", "failed", "--url", backend_url) == {"purged": 0}
    assert ok_json("purge", "--older-than", "0s", "--url", backend_url) == {"purged": 1}
    assert [t["id"] for t in ok_json("list", "--url", backend_url)["tasks"]] == [waiting]


def test_migrate_says_there_is_nothing_to_migrate(backend_url: str) -> None:
    doc = ok_json("migrate", "--url", backend_url)
    assert [entry["migrated"] for entry in doc["backends"]] == [None]
    assert "nothing to migrate" in invoke("migrate", "--url", backend_url).stdout


def test_the_url_comes_from_salvador_url_when_not_given(backend_url: str) -> None:
    task_id = submit(backend_url, "cli-ok", '{"n": 1}')
    result = invoke("show", task_id, "--json", env={"SALVADOR_URL": backend_url})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["id"] == task_id


def test_stats_uses_a_backends_own_counts_when_it_has_them() -> None:
    class Counting(MemoryBackend):
        async def stats(self) -> list[WorkflowStats]:
            return [WorkflowStats("a", {"pending": 7}, queued=7), WorkflowStats("b", {"failed": 1})]

    async def go() -> tuple[list[WorkflowStats], list[WorkflowStats]]:
        async with Engine(Counting(), observers=[]) as engine:
            engine.register(app.ok)
            await engine.submit("cli-ok", {"n": 1})  # not counted: the backend's answer is used
            return await _stats(engine, None), await _stats(engine, "b")

    everything, only_b = asyncio.run(go())
    assert [(s.workflow, s.counts) for s in everything] == [("a", {"pending": 7}), ("b", {"failed": 1})]
    assert [s.workflow for s in only_b] == ["b"]
