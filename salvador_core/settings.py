"""Engine settings, from arguments or the environment, and the `module:attribute` loader.

One `Settings` object is what `Engine`, the conformance suite and the command line share:
`Settings.from_env()` reads `SALVADOR_URL`, `SALVADOR_CONCURRENCY`, ... and arguments win
over the environment. `load_object("myapp.tasks:engine")` finds a user's engine or workflow
the way `uvicorn` and `celery -A` find an app.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from salvador_core.errors import ConfigurationError
from salvador_core.task import DEFAULT_MAX_PAYLOAD_BYTES

#: Environment variables and the settings they set.
ENVIRONMENT: dict[str, str] = {
    "SALVADOR_URL": "url",
    "SALVADOR_STORE_URL": "store_url",
    "SALVADOR_QUEUE_URL": "queue_url",
    "SALVADOR_CONCURRENCY": "concurrency",
    "SALVADOR_LEASE": "lease",
    "SALVADOR_POLL_INTERVAL": "poll_interval",
    "SALVADOR_DRAIN_TIMEOUT": "drain_timeout",
    "SALVADOR_MAX_PAYLOAD_BYTES": "max_payload_bytes",
    "SALVADOR_RETENTION": "retention",
    "SALVADOR_DURABILITY": "durability",
}

#: What `Engine.open` does with the durability preflight (salvador_core/durability.py).
DURABILITY_MODES = ("warn", "strict", "off")


@dataclass(frozen=True)
class Settings:
    """How an engine runs. Times are in seconds.

    `concurrency`: tasks of each workflow one process runs at once. `lease`: how long a claim
    lasts without a heartbeat (heartbeats run every lease/3), so a dead worker's task comes
    back within `lease`. `poll_interval`: the longest one claim waits (idle workers are woken
    by the backend; this bounds a missed wake-up). `drain_timeout`: how long shutdown lets
    running steps finish before it interrupts and releases them. `max_payload_bytes`: the
    largest body or step result. `retention`: purge finished tasks older than this (None:
    keep them). `url` (or `store_url` + `queue_url`): the backend, for `Engine.from_url`.
    `durability`: at open, `warn` (the default) logs once what a crash would lose with the
    backend's settings, `strict` refuses to open on a critical finding, `off` skips it.
    """

    url: str | None = None
    store_url: str | None = None
    queue_url: str | None = None
    concurrency: int = 1
    lease: float = 30.0
    poll_interval: float = 1.0
    drain_timeout: float = 30.0
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    retention: float | None = None
    durability: str = "warn"

    def __post_init__(self) -> None:
        if (
            not isinstance(self.concurrency, int)
            or isinstance(self.concurrency, bool)
            or self.concurrency < 1
        ):
            raise ConfigurationError(
                f"concurrency must be a whole number of at least 1, got {self.concurrency!r}"
            )
        for name in ("lease", "poll_interval"):
            value = getattr(self, name)
            if not _finite(value) or value <= 0:
                raise ConfigurationError(f"{name} must be a number of seconds above 0, got {value!r}")
        if not _finite(self.drain_timeout) or self.drain_timeout < 0:
            raise ConfigurationError(
                f"drain_timeout must be a number of seconds, 0 or more, got {self.drain_timeout!r}"
            )
        if self.retention is not None and (not _finite(self.retention) or self.retention <= 0):
            raise ConfigurationError(
                f"retention must be a number of seconds above 0 or None, got {self.retention!r}"
            )
        if self.durability not in DURABILITY_MODES:
            raise ConfigurationError(
                f"durability must be one of {', '.join(DURABILITY_MODES)}, got {self.durability!r}"
            )
        if (
            not isinstance(self.max_payload_bytes, int)
            or isinstance(self.max_payload_bytes, bool)
            or self.max_payload_bytes < 1
        ):
            raise ConfigurationError(
                f"max_payload_bytes must be a whole number above 0, got {self.max_payload_bytes!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `environ` (default `os.environ`), then `overrides` (None values are
        ignored, so command-line options that were not given fall through)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable, name in ENVIRONMENT.items():
            raw = env.get(variable)
            if raw is not None and raw != "":
                values[name] = _parse(name, raw, variable)
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigurationError(
                f"unknown settings {sorted(unknown)}; known: {sorted(f.name for f in fields(cls))}"
            )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_options(self, **options: Any) -> Settings:
        """A copy with `options` changed (unknown names are refused)."""
        unknown = set(options) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigurationError(f"unknown settings {sorted(unknown)}")
        return replace(self, **options)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse(name: str, raw: str, variable: str) -> Any:
    if name.endswith("url") or name == "durability":
        return raw
    try:
        if name in ("concurrency", "max_payload_bytes"):
            return int(raw)
        return float(raw)
    except ValueError:
        kind = "a whole number" if name in ("concurrency", "max_payload_bytes") else "a number of seconds"
        raise ConfigurationError(f"${variable} must be {kind}, got {raw!r}") from None


def load_object(spec: str) -> Any:
    """The object named by `module:attribute` (dots allowed after the colon), e.g.
    `myapp.worker:engine`. Raises `ConfigurationError` saying which part was not found."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"{spec!r} is not MODULE:ATTRIBUTE (for example 'myapp.worker:engine')")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"cannot import module {module_name!r} ({exc}); run from the directory that holds "
                "it or put it on PYTHONPATH"
            ) from None
        raise
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return value
