"""The error tree: one module, retryable as a class attribute, messages that say what to do."""

from __future__ import annotations

import inspect

import salvador_core
from salvador_core import errors


def error_classes() -> list[type[errors.SalvadorError]]:
    return [
        c for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.SalvadorError) and c.__module__ == errors.__name__
    ]


def test_every_error_is_in_the_tree_of_the_module_docstring() -> None:
    doc = errors.__doc__ or ""
    for cls in error_classes():
        assert cls.__name__ in doc, f"{cls.__name__} is missing from the tree in errors.py"


def test_every_error_is_exported_from_the_package() -> None:
    for cls in error_classes():
        assert getattr(salvador_core, cls.__name__) is cls


def test_retryable_is_a_class_attribute() -> None:
    assert errors.BackendUnavailableError.retryable is True
    assert errors.StepTimeoutError.retryable is True
    assert errors.ConflictError.retryable is False
    assert errors.ConfigurationError("x").retryable is False


def test_messages_say_what_to_do() -> None:
    assert "Re-read the task" in str(errors.ConflictError("t", 2, 3))
    assert "it no longer exists" in str(errors.ConflictError("t", 2, None))
    assert "engine.register" in str(errors.UnknownWorkflowError("w", ["a"]))
    assert "raise `max_payload_bytes`" in str(errors.PayloadTooLargeError("the body", 10, 5))
    assert "upgrade salvador" in str(errors.RecordVersionError("t", 9, 1))
