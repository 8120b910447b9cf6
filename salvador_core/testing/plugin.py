"""pytest plugin (entry point `pytest11: salvador`): reports what the conformance suite skipped.

A skipped conformance check is a capability the backend did not declare; the summary lists
each one with its reason, so a run that passes by skipping is visible at a glance.
"""

from __future__ import annotations

from typing import Any

import pytest

_SKIPPED_KEY = pytest.StashKey[list[tuple[str, str]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SKIPPED_KEY] = []


def _is_conformance(item: pytest.Item) -> bool:
    cls = getattr(item, "cls", None)
    if cls is None:
        return False
    from salvador_core.testing.base import ConformanceBase

    return issubclass(cls, ConformanceBase)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.skipped and _is_conformance(item):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        item.config.stash[_SKIPPED_KEY].append((item.nodeid, reason.removeprefix("Skipped: ")))
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    skipped = config.stash.get(_SKIPPED_KEY, [])
    if not skipped:
        return
    terminalreporter.section("salvador conformance: checks skipped")
    for nodeid, reason in skipped:
        terminalreporter.write_line(f"{nodeid}: {reason}")
