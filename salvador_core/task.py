"""The task record: what is stored, how it is serialised, and the claim that leases it."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
import traceback as tb
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from salvador_core.errors import CorruptRecordError, PayloadTooLargeError
from salvador_core.errors import RecordVersionError as RecordVersionError  # re-exported

#: Format version written into every stored record. Readers refuse newer ones.
RECORD_FORMAT = 1

#: Default limit for a body or one step result. A backend with a lower limit of its own
#: declares it (`max_payload_bytes`) and the engine uses the smaller of the two.
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


class TaskStatus(str, Enum):
    """Where a task is in its life. Terminal statuses never change again (except requeue)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATED = "compensated"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    def __str__(self) -> str:
        return self.value


TERMINAL_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.COMPENSATED}
)
#: Statuses of tasks that failed for good: the dead-letter set.
DEAD_LETTER_STATUSES = frozenset({TaskStatus.FAILED, TaskStatus.COMPENSATED})


class DeadLetter(str, Enum):
    """Why a task failed for good: `task.dead_letter`. A str, so `task.dead_letter ==
    "step-failed"` holds; records written before the spelling was settled (`worker_lost`)
    read as the same member."""

    STEP_FAILED = "step-failed"
    WORKER_LOST = "worker-lost"
    COMPENSATION_FAILED = "compensation-failed"
    CORRUPT_RECORD = "corrupt-record"
    UNKNOWN_WORKFLOW = "unknown-workflow"
    WORKFLOW_CHANGED = "workflow-changed"
    INTERNAL_ERROR = "internal-error"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> DeadLetter | None:
        if isinstance(value, str):
            spelled = value.replace("_", "-")
            for member in cls:
                if member.value == spelled:
                    return member
        return None


def dead_letter_of(value: object) -> DeadLetter | str | None:
    """A stored reason as a `DeadLetter`; an unknown one (from a newer salvador) stays a str."""
    if value is None:
        return None
    try:
        return DeadLetter(value)
    except ValueError:
        return str(value)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


#: Hex digits at the start of a task id that hold its creation time in epoch milliseconds.
ID_TIME_DIGITS = 12
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def new_task_id() -> str:
    """A 32-hex-digit id whose first 12 digits are the creation time in ms (sortable)."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def id_time_prefix(moment: datetime) -> str:
    """The first `ID_TIME_DIGITS` digits of an id made at `moment` (clamped to what they
    hold): ids sort by creation time, so this bounds a range of them."""
    milliseconds = (moment - _EPOCH) // timedelta(milliseconds=1)
    return f"{min(max(milliseconds, 0), 16**ID_TIME_DIGITS - 1):0{ID_TIME_DIGITS}x}"


@dataclass(frozen=True)
class TaskError:
    """One failure: what was raised, in which step and attempt, and when."""

    type: str
    message: str
    step: str | None
    attempt: int
    traceback: str = ""
    at: datetime = field(default_factory=utcnow)

    @classmethod
    def from_exception(cls, exc: BaseException, *, step: str | None, attempt: int) -> TaskError:
        summary = "".join(tb.format_exception(type(exc), exc, exc.__traceback__, limit=8))
        return cls(
            type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            message=str(exc) or type(exc).__name__,
            step=step,
            attempt=attempt,
            traceback=summary[-4000:],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "step": self.step,
            "attempt": self.attempt,
            "traceback": self.traceback,
            "at": self.at.timestamp(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskError:
        return cls(
            type=d["type"],
            message=d["message"],
            step=d.get("step"),
            attempt=int(d.get("attempt", 0)),
            traceback=d.get("traceback", ""),
            at=_ts(d["at"]),
        )


@dataclass(frozen=True)
class Task:
    """A submitted unit of work and its progress through its workflow.

    `step` is the number of completed steps, so it is also the index of the step to run
    next. `version` is bumped by every write and fences them: a write based on an old
    version raises `ConflictError`. `owner` names the worker run that holds the task while
    it is running, so a worker can tell a takeover from a cancel request.
    """

    id: str
    workflow: str
    body: bytes = b""
    status: TaskStatus = TaskStatus.PENDING
    step: int = 0
    attempt: int = 0
    results: dict[str, Any] = field(default_factory=dict)
    error: TaskError | None = None
    failures: tuple[TaskError, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    not_before: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    version: int = 0
    owner: str | None = None
    cancel_requested: bool = False
    dead_letter: str | None = None
    compensated: tuple[str, ...] = ()

    def evolve(self, **changes: Any) -> Task:
        """A copy with `changes` applied; the stored record is untouched until `update`.

        On the hot path (several times per step), so it copies the instance dict instead of
        re-running `__init__` as `dataclasses.replace` would (about 10x faster).
        """
        if not _TASK_FIELDS.issuperset(changes):
            raise TypeError(f"Task has no field(s) {sorted(changes.keys() - _TASK_FIELDS)}")
        copy = object.__new__(Task)
        state = copy.__dict__
        state.update(self.__dict__)
        state.update(changes)
        if not _HEAD_FIELDS.isdisjoint(changes):
            state.pop(_RECORD_HEAD, None)
        return copy

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        return (
            f"Task(id={self.id!r}, workflow={self.workflow!r}, status={self.status.value}, "
            f"step={self.step}, attempt={self.attempt}, version={self.version})"
        )


_TASK_FIELDS = frozenset(f.name for f in fields(Task))

#: Instance-dict key caching the encoded start of a task's record (format, id, workflow and
#: the base64 body). Those never change after submit, yet every checkpoint re-encodes the
#: record, and a large body made that the bulk of the work. `evolve` copies the cache and
#: drops it when one of `_HEAD_FIELDS` changes.
_RECORD_HEAD = "_record_head"
_HEAD_FIELDS = frozenset({"id", "workflow", "body"})


@dataclass(frozen=True)
class Claim:
    """A lease on one task, handed out by `TaskQueue.claim`.

    `receipt` is opaque to the engine; the backend uses it to tell this lease from a later
    one on the same task. `deliveries` counts how often the task was handed out. `deadline`
    is the lease expiry in epoch seconds on the backend's clock (informational). A backend
    that reads the record in the same round trip may attach it as `task`.
    """

    task_id: str
    workflow: str
    receipt: str
    deliveries: int
    deadline: float
    task: Task | None = None


@dataclass(frozen=True)
class Page:
    """One page of a listing; pass `cursor` back to get the next page (None: no more)."""

    tasks: list[Task]
    cursor: str | None


#: How many minutes `WorkflowStats.completions` covers: the last hour.
COMPLETION_MINUTES = 60


@dataclass
class WorkflowStats:
    """One workflow's numbers. `counts`: tasks by status. `queued`: pending and due now (the
    queue depth); `delayed`: pending with a later due time (retry back-off, --delay).
    `oldest_wait_seconds`: how long the longest-waiting due task has been waiting.
    `dead_letters`: failed and compensated tasks. `completions`: tasks that reached
    `completed` in each of the last 60 clock minutes (UTC, whole minutes), oldest first,
    the current, partial minute last: always `COMPLETION_MINUTES` entries once filled (see
    `completion_buckets`), empty only from a backend that does not count them."""

    workflow: str
    counts: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    delayed: int = 0
    oldest_wait_seconds: float | None = None
    dead_letters: int = 0
    completions: tuple[int, ...] = ()


def completion_buckets(per_minute: Iterable[tuple[int, int]], now: float) -> tuple[int, ...]:
    """`WorkflowStats.completions` from `(epoch minute, completions)` pairs: the last
    `COMPLETION_MINUTES` minutes up to the one holding `now` (epoch seconds). Pairs of
    earlier minutes are left out; a minute after `now` (a writer whose clock runs ahead of
    the reader's) counts in the current one, so no completion is lost to clock skew."""
    current = int(now // 60)
    buckets = [0] * COMPLETION_MINUTES
    for minute, count in per_minute:
        index = COMPLETION_MINUTES - 1 - (current - min(int(minute), current))
        if index >= 0:
            buckets[index] += int(count)
    return tuple(buckets)


class StatsTally:
    """`WorkflowStats` counted task by task, for what has no index to count from: the
    listing fallback of `salvador stats` and memory://. Completions per minute come from
    each completed task's `updated_at` (a completed task is never written again)."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._found: dict[str, WorkflowStats] = {}
        self._finished: dict[str, Counter[int]] = {}

    def add(self, task: Task, *, leased: bool = False) -> None:
        """Count `task`; a pending task someone holds a lease on is neither queued nor
        delayed (a listing cannot tell, and passes False)."""
        stats = self._found.get(task.workflow)
        if stats is None:
            stats = self._found[task.workflow] = WorkflowStats(task.workflow)
            self._finished[task.workflow] = Counter()
        stats.counts[task.status.value] = stats.counts.get(task.status.value, 0) + 1
        if task.status is TaskStatus.COMPLETED:
            self._finished[task.workflow][int(task.updated_at.timestamp() // 60)] += 1
        if task.status in DEAD_LETTER_STATUSES:
            stats.dead_letters += 1
        if task.status is TaskStatus.PENDING and not leased:
            if task.not_before is not None and task.not_before > self.now:
                stats.delayed += 1
            else:
                stats.queued += 1
                waited = (self.now - (task.not_before or task.created_at)).total_seconds()
                stats.oldest_wait_seconds = max(stats.oldest_wait_seconds or 0.0, waited)

    def result(self) -> list[WorkflowStats]:
        """One entry per workflow counted, by name."""
        for name, stats in self._found.items():
            stats.completions = completion_buckets(self._finished[name].items(), self.now.timestamp())
        return [self._found[name] for name in sorted(self._found)]


def _record_head(task: Task) -> bytes:
    """`{"format":1,"id":...,"workflow":...,"body":...,` for `task`, encoded once."""
    state = task.__dict__
    head: bytes | None = state.get(_RECORD_HEAD)
    if head is None:
        head = _encode_record({
            "format": RECORD_FORMAT,
            "id": task.id,
            "workflow": task.workflow,
            "body": base64.b64encode(task.body).decode("ascii"),
        }).encode("utf-8", _ESCAPE)[:-1] + b","
        state[_RECORD_HEAD] = head
    return head


#: `json.dumps(..., separators=(",", ":"), ensure_ascii=False)`, but built once: `dumps`
#: builds a new encoder for every call, and records are written at every checkpoint.
_encode_record = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

#: How text that UTF-8 cannot hold (lone surrogates, as `os.fsdecode` makes of undecodable
#: file names, e.g. in an exception message) is written: as the JSON escape `\udcff`, which
#: reads back as the same string. The encoder runs only on strings (JSON keys and values),
#: so this is exactly what `ensure_ascii=True` would write for those characters, and only
#: for them: a record can always be written.
_ESCAPE = "backslashreplace"


def encode_task(task: Task) -> bytes:
    """Serialise `task` to the versioned JSON record format every backend stores."""
    # The rest, spliced after the cached head; keys keep the order they always had.
    record: dict[str, Any] = {
        "status": task.status.value,
        "step": task.step,
        "attempt": task.attempt,
        "results": task.results,
        "meta": task.meta,
        "created_at": task.created_at.timestamp(),
        "updated_at": task.updated_at.timestamp(),
        "version": task.version,
    }
    if task.error is not None:
        record["error"] = task.error.to_dict()
    if task.failures:
        record["failures"] = [f.to_dict() for f in task.failures]
    if task.idempotency_key is not None:
        record["idempotency_key"] = task.idempotency_key
    if task.not_before is not None:
        record["not_before"] = task.not_before.timestamp()
    if task.owner is not None:
        record["owner"] = task.owner
    if task.cancel_requested:
        record["cancel_requested"] = True
    if task.dead_letter is not None:
        record["dead_letter"] = task.dead_letter
    if task.compensated:
        record["compensated"] = list(task.compensated)
    return _record_head(task) + _encode_record(record).encode("utf-8", _ESCAPE)[1:]


def decode_task(raw: bytes | str, task_id: str = "?") -> Task:
    """Parse a stored record. Raises `CorruptRecordError` or `RecordVersionError`."""
    raw_bytes = raw.encode() if isinstance(raw, str) else bytes(raw)
    try:
        # Records are written as UTF-8; decoding first skips json's encoding sniffing.
        d = json.loads(raw if isinstance(raw, str) else raw_bytes.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRecordError(task_id, f"not valid JSON: {exc}", raw_bytes) from None
    if not isinstance(d, dict):
        raise CorruptRecordError(task_id, "record is not a JSON object", raw_bytes)
    fmt = d.get("format")
    if isinstance(fmt, int) and fmt > RECORD_FORMAT:
        raise RecordVersionError(task_id, fmt, RECORD_FORMAT)
    try:
        if fmt != RECORD_FORMAT:
            raise ValueError(f"unknown record format {fmt!r}")
        state = {
            "id": str(d["id"]),
            "workflow": str(d["workflow"]),
            "body": base64.b64decode(d["body"], validate=True),
            "status": TaskStatus(d["status"]),
            "step": int(d["step"]),
            "attempt": int(d["attempt"]),
            "results": dict(d["results"]),
            "error": TaskError.from_dict(d["error"]) if "error" in d else None,
            "failures": tuple(TaskError.from_dict(f) for f in d.get("failures", ())),
            "meta": {str(k): str(v) for k, v in d["meta"].items()},
            "idempotency_key": d.get("idempotency_key"),
            "not_before": _ts(d["not_before"]) if "not_before" in d else None,
            "created_at": _ts(d["created_at"]),
            "updated_at": _ts(d["updated_at"]),
            "version": int(d["version"]),
            "owner": d.get("owner"),
            "cancel_requested": bool(d.get("cancel_requested", False)),
            "dead_letter": dead_letter_of(d.get("dead_letter")),
            "compensated": tuple(d.get("compensated", ())),
        }
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CorruptRecordError(task_id, detail, raw_bytes) from None
    head = _stored_head(raw_bytes, str(d["id"]), str(d["workflow"]), d["body"])
    if head is not None:
        state[_RECORD_HEAD] = head
    # Every field is set above, so the frozen dataclass's __init__ (one object.__setattr__
    # per field, on every read of every record) has nothing to add.
    task = object.__new__(Task)
    task.__dict__.update(state)
    return task


def _stored_head(raw: bytes, task_id: str, workflow: str, body: str) -> bytes | None:
    """The start of `raw` that `_record_head` would write for these fields, if `raw` starts
    with exactly that (None otherwise: other key order, escapes, spacing): the first
    checkpoint of a task just read then need not encode its body again. The bytes are the
    record's own, so whatever they say reads back as the fields just decoded from them."""
    head = f'{{"format":{RECORD_FORMAT},"id":"{task_id}","workflow":"{workflow}","body":"{body}",'
    encoded = head.encode("utf-8", _ESCAPE)
    return encoded if raw.startswith(encoded) else None


def next_version(task: Task, after: int) -> Task:
    """`task` as a fenced write over version `after` stores it: version `after + 1`,
    `updated_at` now. Every backend's update, requeue, settle and quarantine writes this."""
    return task.evolve(version=after + 1, updated_at=utcnow())


def quarantine_task(task_id: str, workflow: str, raw: bytes, reason: str) -> Task:
    """The failed, dead-lettered task that replaces an unreadable record, keeping its bytes."""
    now = utcnow()
    return Task(
        id=task_id,
        workflow=workflow,
        body=raw,
        status=TaskStatus.FAILED,
        error=TaskError(type="salvador.CorruptRecord", message=reason, step=None, attempt=0),
        dead_letter=DeadLetter.CORRUPT_RECORD,
        created_at=now,
        updated_at=now,
        meta={"salvador.quarantined": "raw record kept as body"},
    )


def dump_json(value: Any, *, what: str) -> bytes:
    """Serialise a user value, turning failures into a `StepResultError` that names `what`."""
    from salvador_core.errors import StepResultError

    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StepResultError(
            f"{what} is not JSON-serialisable ({type(value).__name__}: {exc}); use dicts, "
            "lists, strings, numbers, booleans or None (convert dataclasses, datetimes and "
            "Decimals yourself)."
        ) from None
    return text.encode("utf-8", _ESCAPE)


def check_size(what: str, data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise PayloadTooLargeError(what, len(data), limit)


def statuses_of(status: TaskStatus | str | Iterable[TaskStatus | str] | None) -> frozenset[TaskStatus] | None:
    """Normalise a status filter argument to a set (None: any status)."""
    if status is None:
        return None
    if isinstance(status, (TaskStatus, str)):
        return frozenset({TaskStatus(status)})
    return frozenset(TaskStatus(s) for s in status)


def purge_statuses(statuses: Iterable[TaskStatus | str]) -> frozenset[TaskStatus]:
    """Validate `purge`'s statuses argument: only terminal tasks may be purged."""
    wanted = statuses_of(statuses) or frozenset()
    if not wanted <= TERMINAL_STATUSES:
        bad = ", ".join(sorted(s.value for s in wanted - TERMINAL_STATUSES))
        raise ValueError(f"purge only deletes terminal tasks; {bad} are not terminal")
    return wanted


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(float(value), timezone.utc)
