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
from salvador_core.observe import LoggingObserver, Observer
from salvador_core.protocols import (
    Backend,
    BatchClaims,
    TaskCounts,
    TaskQueue,
    TaskStore,
    TransactionalSubmit,
)
from salvador_core.retry import NO_RETRY, RetryPolicy
from salvador_core.run import ActiveRun
from salvador_core.settings import Settings, load_object
from salvador_core.split import SplitBackend
from salvador_core.task import (
    Claim,
    DeadLetter,
    Page,
    RecordVersionError,
    Task,
    TaskError,
    TaskStatus,
    WorkflowStats,
    decode_task,
    encode_task,
)
from salvador_core.workflow import StepContext, Workflow

__version__ = "0.1.0"

__all__ = [
    "NO_RETRY",
    "ActiveRun",
    "Backend",
    "BackendNotOpenError",
    "BackendUnavailableError",
    "BatchClaims",
    "Claim",
    "ConfigurationError",
    "ConflictError",
    "CorruptRecordError",
    "DeadLetter",
    "Engine",
    "InvalidStateError",
    "LeaseLostError",
    "LoggingObserver",
    "Observer",
    "Page",
    "PayloadTooLargeError",
    "RecordVersionError",
    "RetryPolicy",
    "SalvadorError",
    "Settings",
    "SplitBackend",
    "StepCancelledError",
    "StepContext",
    "StepResultError",
    "StepTimeoutError",
    "Task",
    "TaskCounts",
    "TaskError",
    "TaskNotFoundError",
    "TaskQueue",
    "TaskStatus",
    "TaskStore",
    "TransactionalSubmit",
    "UnknownWorkflowError",
    "Workflow",
    "WorkflowStats",
    "connect",
    "decode_task",
    "encode_task",
    "load_object",
    "redact_url",
]
