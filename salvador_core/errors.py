"""Every error salvador raises on purpose, in one tree. Each message says what went wrong
and what to do about it.

```
SalvadorError
├── ConfigurationError        a URL, option or installation to fix before anything runs
│   └── BackendNotOpenError   a backend used before it was opened
├── BackendUnavailableError   the server cannot be reached or stopped answering   (retryable)
├── ConflictError             a fenced write lost: another writer changed the task first
├── LeaseLostError            a claim's lease expired or was taken over
├── TaskNotFoundError         no such task (never created, discarded or purged)
├── UnknownWorkflowError      a workflow name this engine does not know
├── InvalidStateError         an operation that does not apply to the task's status
├── CorruptRecordError        a stored record that cannot be decoded (raw bytes kept)
├── RecordVersionError        a record written by a newer salvador
├── PayloadTooLargeError      a body or step result over the size limit
├── StepResultError           a step result that cannot be stored as JSON
├── StepTimeoutError          a step overran its timeout                          (retryable)
└── StepCancelledError        the task was cancelled while the step ran
```

`retryable` (a class attribute) says whether trying the same thing again later can succeed.
It decides what a worker does when handling a claimed task fails outside the step's code: a
retryable error (the backend went away; an `OSError` or a timeout counts as one) is logged
and the task is left to its lease, to be tried again; any other error is a fault to look
at, recorded as the task's failure (dead letter `internal-error`) if the worker owns the
task by then, else also left to its lease. The claim loop does not ask: a claim writes no
record, so after any error it backs off and claims again. Inside a step, whatever the
step's own code raises, a `SalvadorError` from a call it made included, follows the step's
`RetryPolicy`; `retryable` does not override the policy. Driver errors (redis-py, sqlite3,
...) are mapped to these at each backend's boundary, never passed through raw.
"""

from __future__ import annotations


class SalvadorError(Exception):
    """Base class of every error salvador raises on purpose."""

    #: Whether doing the same thing again later can succeed.
    retryable: bool = False


class ConfigurationError(SalvadorError):
    """A URL, option or installation problem the user must fix before anything runs."""


class BackendNotOpenError(ConfigurationError):
    """A backend was used before it was opened (or after it was closed)."""

    def __init__(self, backend: str) -> None:
        super().__init__(
            f"the {backend} backend is not open; use `async with engine:` (or `await "
            "engine.open()`, or `async with backend:` for a backend used on its own) before "
            "submitting or reading tasks"
        )


class BackendUnavailableError(SalvadorError):
    """The backend server cannot be reached or stopped answering."""

    retryable = True


class ConflictError(SalvadorError):
    """A fenced write lost: the stored task changed since it was read.

    For a worker this means another worker owns the task now; it must stop touching it.
    """

    def __init__(self, task_id: str, expected_version: int, actual_version: int | None) -> None:
        self.task_id = task_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        found = "it no longer exists" if actual_version is None else f"found {actual_version}"
        super().__init__(
            f"task {task_id}: expected version {expected_version}, {found}; another writer "
            "changed it first. Re-read the task before writing again."
        )


class LeaseLostError(SalvadorError):
    """The lease on a claimed task expired or was taken over; the claim is void."""

    def __init__(self, task_id: str, detail: str = "") -> None:
        self.task_id = task_id
        self.detail = detail  # how it was lost, as the backend saw it ("it expired", ...)
        super().__init__(
            f"lease on task {task_id} was lost{': ' + detail if detail else ''}; another worker "
            "may own it now. Stop working on it; raise the engine's `lease` if steps are "
            "slow, or call ctx.heartbeat() more often."
        )


class UnknownWorkflowError(SalvadorError):
    """A task names a workflow this engine does not know."""

    def __init__(self, workflow: str, known: list[str]) -> None:
        self.workflow = workflow
        names = ", ".join(repr(k) for k in sorted(known)) or "none"
        super().__init__(
            f"workflow {workflow!r} is not registered with this engine (registered: {names}); "
            "call engine.register(workflow) before submitting to it."
        )


class TaskNotFoundError(SalvadorError):
    """No task with this id exists (never created, discarded or purged)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"no task with id {task_id!r}; it was never created or was purged.")


class InvalidStateError(SalvadorError):
    """An operation does not apply to the task in its current status."""


class CorruptRecordError(SalvadorError):
    """A stored record cannot be decoded; it is preserved, never dropped."""

    def __init__(self, task_id: str, reason: str, raw: bytes = b"") -> None:
        self.task_id = task_id
        self.reason = reason
        self.raw = raw
        super().__init__(
            f"task {task_id}: stored record cannot be read ({reason}). The engine dead-letters "
            "it with the raw bytes kept as its body; inspect it with engine.dead_letters()."
        )


class RecordVersionError(SalvadorError):
    """A record was written by a newer salvador; this worker leaves it for a newer one."""

    def __init__(self, task_id: str, found: int, understood: int = 1) -> None:
        self.task_id = task_id
        self.found = found
        super().__init__(
            f"task {task_id}: record format {found} is newer than this salvador understands "
            f"({understood}); upgrade salvador on this worker."
        )


class PayloadTooLargeError(SalvadorError):
    """A body or step result exceeds the configured size limit; nothing was written."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"{what} is {size} bytes, over the limit of {limit} bytes; nothing was written. "
            "Store large data elsewhere (object storage, a table) and pass a reference, "
            "or raise `max_payload_bytes`."
        )


class StepResultError(SalvadorError):
    """A step returned a value that cannot be stored as JSON."""


class StepTimeoutError(SalvadorError):
    """A step ran longer than its `timeout`; the attempt counts as failed."""

    retryable = True


class StepCancelledError(SalvadorError):
    """The task was cancelled while this step was running."""
