"""Settings from arguments and the environment, and the MODULE:ATTRIBUTE loader."""

from __future__ import annotations

import pytest

from salvador_core import Engine, Workflow
from salvador_core.errors import ConfigurationError
from salvador_core.settings import Settings, load_object


def test_environment_is_read_and_arguments_win() -> None:
    env = {"SALVADOR_URL": "memory://", "SALVADOR_CONCURRENCY": "8", "SALVADOR_LEASE": "12.5"}
    settings = Settings.from_env(env, lease=3.0, poll_interval=None)
    assert settings.url == "memory://"
    assert settings.concurrency == 8
    assert settings.lease == 3.0
    assert settings.poll_interval == 1.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SALVADOR_CONCURRENCY": "many"}, r"\$SALVADOR_CONCURRENCY must be a whole number"),
        ({"SALVADOR_LEASE": "soon"}, r"\$SALVADOR_LEASE must be a number of seconds"),
        ({"SALVADOR_LEASE": "0"}, "lease must be a number of seconds above 0"),
        ({"SALVADOR_CONCURRENCY": "0"}, "concurrency must be a whole number of at least 1"),
        ({"SALVADOR_DRAIN_TIMEOUT": "nan"}, "drain_timeout"),
    ],
)
def test_bad_values_name_the_variable_or_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown settings"):
        Settings.from_env({}, leash=3)


def test_engine_options_and_settings_agree() -> None:
    wf = Workflow("w").step("s", lambda ctx: None)
    engine = Engine.from_url("memory://", workflows=[wf], concurrency=3, lease=4.0)
    assert (engine.concurrency, engine.lease) == (3, 4.0)
    assert engine.settings.concurrency == 3
    with pytest.raises(ConfigurationError, match="concurrency"):
        Engine.from_url("memory://", concurrency=0)


def test_engine_from_url_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALVADOR_URL", "memory://")
    monkeypatch.setenv("SALVADOR_POLL_INTERVAL", "0.25")
    engine = Engine.from_url()
    assert engine.poll_interval == 0.25


def test_load_object_finds_module_attributes() -> None:
    assert load_object("salvador_core.settings:Settings") is Settings
    assert load_object("salvador_core:Engine.from_url").__name__ == "from_url"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "is not MODULE:ATTRIBUTE"),
        ("salvador_core:", "is not MODULE:ATTRIBUTE"),
        ("no_such_module_xyz:engine", "cannot import module 'no_such_module_xyz'"),
        ("salvador_core:nothing_here", "has no attribute 'nothing_here'"),
    ],
)
def test_load_object_says_what_was_not_found(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_object(spec)
