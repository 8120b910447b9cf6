"""The record format: what `encode_task` writes and `decode_task` reads back."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from salvador_core.errors import CorruptRecordError, RecordVersionError, StepResultError
from salvador_core.task import (
    RECORD_FORMAT,
    DeadLetter,
    Task,
    TaskError,
    TaskStatus,
    decode_task,
    dump_json,
    encode_task,
    new_task_id,
    purge_statuses,
    utcnow,
)

SURROGATE = b"\xff".decode("utf-8", "surrogateescape")


def full_task() -> Task:
    error = TaskError(type="builtins.ValueError", message="bad", step="b", attempt=2, traceback="tb")
    return Task(
        id=new_task_id(),
        workflow="orders ünï",
        body=b"\x00\x01binary",
        status=TaskStatus.COMPENSATING,
        step=2,
        attempt=3,
        results={"a": {"n": 1}, "b": [1, "x"]},
        error=error,
        failures=(error,),
        meta={"traceparent": "00-abc-def-01"},
        idempotency_key="order-7",
        not_before=utcnow() + timedelta(seconds=5),
        version=4,
        owner="host:1:abc/def",
        cancel_requested=True,
        dead_letter=DeadLetter.STEP_FAILED,
        compensated=("b",),
    )


def test_every_field_round_trips() -> None:
    task = full_task()
    back = decode_task(encode_task(task), task.id)
    for field in ("id", "workflow", "body", "status", "step", "attempt", "results", "meta",
                  "idempotency_key", "version", "owner", "cancel_requested", "dead_letter",
                  "compensated", "failures"):
        assert getattr(back, field) == getattr(task, field), field
    assert back.error == task.error
    assert back.not_before is not None
    assert task.not_before is not None
    assert abs((back.not_before - task.not_before).total_seconds()) < 1e-3


def test_the_record_is_versioned_utf8_json_with_a_base64_body() -> None:
    record = json.loads(encode_task(full_task()))
    assert record["format"] == RECORD_FORMAT
    assert record["body"] == "AAFiaW5hcnk="
    assert record["dead_letter"] == "step-failed"


def test_text_utf8_cannot_hold_is_escaped_and_reads_back_unchanged() -> None:
    name = f"report-{SURROGATE}.csv"
    error = TaskError.from_exception(ValueError(f"unexpected file: {name}"), step="scan", attempt=1)
    task = Task(id=new_task_id(), workflow="wf", error=error, results={"scan": name})
    raw = encode_task(task)
    raw.decode("utf-8")  # valid UTF-8 throughout
    assert b"\\udcff" in raw
    back = decode_task(raw, task.id)
    assert back.error is not None
    assert back.error.message == f"unexpected file: {name}"
    assert back.results == {"scan": name}


@pytest.mark.parametrize(
    "workflow", ["orders", "orders ünï", 'quote"d', "back\\slash", "tab\there", f"x{SURROGATE}y", "a/b"]
)
def test_a_record_read_back_is_written_again_with_the_same_head(workflow: str) -> None:
    # A decoded task keeps its record's head (format, id, workflow, body) when the record
    # starts exactly as encode_task writes it, so its next write need not encode the body
    # again; where it does not (escapes), the head is encoded anew. Either way the next
    # record reads back as the task.
    task = Task(id=new_task_id(), workflow=workflow, body=b"\x00\x01binary" * 50)
    raw = encode_task(task)
    back = decode_task(raw, task.id)
    written = encode_task(back.evolve(step=1, status=TaskStatus.RUNNING))
    assert written[: raw.index(b'"status"')] == raw[: raw.index(b'"status"')]
    again = decode_task(written, task.id)
    assert (again.id, again.workflow, again.body, again.step) == (task.id, workflow, task.body, 1)


def test_a_head_written_another_way_is_not_reused_as_it_stands() -> None:
    task = Task(id=new_task_id(), workflow="wf", body=b"payload")
    record = json.loads(encode_task(task))
    spaced = json.dumps(record).encode()  # other spacing: a head of other bytes
    reordered = json.dumps({"body": record["body"], **record}, separators=(",", ":")).encode()
    for raw in (spaced, reordered):
        back = decode_task(raw, task.id)
        written = encode_task(back.evolve(step=1))
        assert written.startswith(b'{"format":1,"id":"' + task.id.encode() + b'","workflow":"wf","body":"')
        again = decode_task(written, task.id)
        assert (again.id, again.workflow, again.body, again.step) == (task.id, "wf", b"payload", 1)


def test_old_dead_letter_spellings_read_as_the_same_member() -> None:
    task = Task(id=new_task_id(), workflow="wf", status=TaskStatus.FAILED, dead_letter="worker_lost")
    back = decode_task(encode_task(task), task.id)
    assert back.dead_letter is DeadLetter.WORKER_LOST
    assert back.dead_letter == "worker-lost"


def test_an_unknown_dead_letter_reason_is_kept_as_written() -> None:
    task = Task(id=new_task_id(), workflow="wf", status=TaskStatus.FAILED, dead_letter="from-the-future")
    assert decode_task(encode_task(task), task.id).dead_letter == "from-the-future"


def test_a_newer_format_is_refused_with_the_versions_named() -> None:
    record = json.loads(encode_task(full_task()))
    record["format"] = RECORD_FORMAT + 1
    with pytest.raises(RecordVersionError, match=rf"format {RECORD_FORMAT + 1} is newer.*upgrade"):
        decode_task(json.dumps(record).encode(), "t1")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"format": 1, "id": "x"}', "missing field"),
        (b'{"format": "one"}', "unknown record format"),
    ],
)
def test_corrupt_records_keep_their_raw_bytes(raw: bytes, reason: str) -> None:
    with pytest.raises(CorruptRecordError, match=reason) as info:
        decode_task(raw, "t1")
    assert info.value.raw == raw
    assert info.value.task_id == "t1"


def test_task_ids_sort_by_creation_time_to_the_millisecond() -> None:
    ids = []
    for _ in range(20):
        ids.append(new_task_id())
        time.sleep(0.002)
    assert ids == sorted(ids)
    assert len({new_task_id() for _ in range(1000)}) == 1000
    assert all(len(i) == 32 for i in ids)


def test_dump_json_refuses_what_json_cannot_hold_naming_it() -> None:
    with pytest.raises(StepResultError, match="the result of step 'x' is not JSON-serialisable"):
        dump_json({1, 2}, what="the result of step 'x'")
    with pytest.raises(StepResultError):
        dump_json(float("nan"), what="x")


def test_purge_refuses_unfinished_statuses() -> None:
    assert purge_statuses(["completed"]) == {TaskStatus.COMPLETED}
    with pytest.raises(ValueError, match="running"):
        purge_statuses([TaskStatus.RUNNING])
