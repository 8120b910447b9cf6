"""salvador: durable, ordered, checkpointed workflows for Python.

Submit a task to a named workflow; it is stored before anything runs. Workers run the
workflow's steps in order and save progress after every step, so a crash replays at most
the step that was running and never loses a task.
"""

from salvador_core.config import connect, redact_url
from salvador_core.engine import Engine
from salvador_core.errors import (
    BackendNotOpenError,
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    CorruptRecordError,
    InvalidStateError,
    LeaseLostError,
    PayloadTooLargeError,
    SalvadorError,
    StepCancelledError,
    StepResultError,
    StepTimeoutError,
    TaskNotFoundError,
    UnknownWorkflowError,
)
from salvador_core.protocols import Backend, TaskQueue, TaskStore
from salvador_core.retry import NO_RETRY, RetryPolicy
from salvador_core.task import (
    Claim,
    Page,
    RecordVersionError,
    Task,
    TaskError,
    TaskStatus,
    decode_task,
    encode_task,
)
from salvador_core.workflow import StepContext, Workflow

__version__ = "0.1.0"

__all__ = [
    "NO_RETRY",
    "Backend",
    "BackendNotOpenError",
    "BackendUnavailableError",
    "Claim",
    "ConfigurationError",
    "ConflictError",
    "CorruptRecordError",
    "Engine",
    "InvalidStateError",
    "LeaseLostError",
    "Page",
    "PayloadTooLargeError",
    "RecordVersionError",
    "RetryPolicy",
    "SalvadorError",
    "StepCancelledError",
    "StepContext",
    "StepResultError",
    "StepTimeoutError",
    "Task",
    "TaskError",
    "TaskNotFoundError",
    "TaskQueue",
    "TaskStatus",
    "TaskStore",
    "UnknownWorkflowError",
    "Workflow",
    "connect",
    "decode_task",
    "encode_task",
    "redact_url",
]
