"""Backends are chosen by URL; every mistake gets a ConfigurationError saying what to fix."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from salvador_core import (
    BackendNotOpenError,
    ConfigurationError,
    Engine,
    SplitBackend,
    Workflow,
    connect,
    redact_url,
)
from salvador_core import config as config_module
from salvador_core.backends.memory import MemoryBackend


def test_memory_url_gives_a_memory_backend() -> None:
    assert isinstance(connect("memory://"), MemoryBackend)


def test_salvador_url_environment_variable_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALVADOR_URL", "memory://")
    assert isinstance(connect(), MemoryBackend)


def test_no_url_anywhere_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SALVADOR_URL", raising=False)
    with pytest.raises(ConfigurationError, match=r"SALVADOR_URL is not set.*sqlite:///"):
        connect()


@pytest.mark.parametrize("url", ["", "localhost:6379", "/var/db/tasks.db", "://nothing"])
def test_malformed_url_is_refused_with_examples(url: str) -> None:
    with pytest.raises(ConfigurationError, match="needs a scheme"):
        connect(url)


def test_unknown_scheme_lists_the_installed_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"ftp://.*installed: .*memory.*sqlite"):
        connect("ftp://example/tasks")


def test_password_never_appears_in_errors() -> None:
    with pytest.raises(ConfigurationError) as info:
        connect("ftp://admin:hunter2@example/tasks")
    assert "hunter2" not in str(info.value)
    assert "admin:***@example" in str(info.value)


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("redis://u:secret@h:6379/0?prefix=a") == "redis://u:***@h:6379/0?prefix=a"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_missing_driver_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheme whose driver import fails says which extra to pip install."""
    broken = EntryPoint(name="redis", value="salvador_no_such_module:Backend", group="salvador.backends")
    real = config_module.entry_points

    def with_broken(group: str) -> list[EntryPoint]:
        return [ep for ep in real(group=group) if ep.name != "redis"] + [broken]

    monkeypatch.setattr(config_module, "entry_points", with_broken)
    with pytest.raises(ConfigurationError, match=r"pip install 'salvador-workflows\[redis\]'"):
        connect("redis://localhost:6379/0")


def test_scheme_we_ship_but_not_installed_gets_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "entry_points", lambda group: [])
    with pytest.raises(ConfigurationError, match=r"pip install 'salvador-workflows\[redis\]'"):
        connect("rediss://127.0.0.1:6380")


def test_third_party_scheme_with_a_missing_driver_names_its_own_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = EntryPoint(name="acme", value="acme_no_such_module:Backend", group="salvador.backends")
    monkeypatch.setattr(config_module, "entry_points", lambda group: [broken])
    with pytest.raises(ConfigurationError, match=r"acme:// backend cannot load its driver") as info:
        connect("acme://somewhere")
    assert "salvador-workflows[" not in str(info.value)
    assert "acme_no_such_module" in str(info.value)


def test_planned_backend_says_it_is_not_released_instead_of_a_useless_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config_module, "_PLANNED", {"kafka": "Kafka"})
    with pytest.raises(ConfigurationError, match=r"no Kafka backend yet") as info:
        connect("kafka://127.0.0.1:9092")
    assert "pip install" not in str(info.value)


@pytest.mark.parametrize("url", ["memory://?prefix=a", "memory://host", "memory:///path"])
def test_memory_url_with_anything_after_the_scheme_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="exactly 'memory://'"):
        connect(url)


def test_third_party_scheme_resolves_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    custom = EntryPoint(
        name="acme", value="salvador_core.backends.memory:MemoryBackend", group="salvador.backends"
    )
    monkeypatch.setattr(config_module, "entry_points", lambda group: [custom])
    assert isinstance(connect("acme://"), MemoryBackend)


def test_sqlite_url_without_a_path_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="sqlite"):
        connect("sqlite://")


def test_sqlite_url_opens_a_file(tmp_path: Path) -> None:
    backend = connect(f"sqlite:///{tmp_path / 'x.db'}")
    assert type(backend).__name__ == "SQLiteBackend"


@pytest.mark.asyncio
async def test_engine_from_split_store_and_queue_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SALVADOR_URL", raising=False)
    monkeypatch.setenv("SALVADOR_STORE_URL", "memory://")
    monkeypatch.setenv("SALVADOR_QUEUE_URL", "memory://")
    engine = Engine.from_url(workflows=[Workflow("w").step("s", lambda ctx: "ran")])
    assert engine.store is not engine.queue
    assert isinstance(engine.backend, SplitBackend)
    assert (engine.backend.store, engine.backend.queue) == (engine.store, engine.queue)
    async with engine:
        task_id = await engine.submit("w")
        # Stored in the store, delivered through the queue, and nowhere else.
        assert await engine.store.get(task_id) is not None
        assert await engine.queue.get(task_id) is None  # type: ignore[attr-defined]
        assert await engine.store.claim("w", lease=5, wait=0) is None  # type: ignore[attr-defined]
        claim = await engine.queue.claim("w", lease=5, wait=0)
        assert claim is not None
        assert claim.task_id == task_id


def test_engine_refuses_a_workflow_without_steps() -> None:
    with pytest.raises(ConfigurationError, match="has no steps"):
        Engine(MemoryBackend(), workflows=[Workflow("empty")])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"concurrency": 0}, "concurrency must be a whole number of at least 1, got 0"),
        ({"lease": 0}, "lease must be a number of seconds above 0, got 0"),
        ({"poll_interval": -1}, "poll_interval must be a number of seconds above 0, got -1"),
        ({"drain_timeout": float("inf")}, "drain_timeout must be a number of seconds, 0 or more"),
        ({"retention": 0}, "retention must be a number of seconds above 0 or None"),
    ],
)
def test_engine_refuses_nonsense_settings_naming_them(option: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Engine(MemoryBackend(), **option)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["memory://", "sqlite:///{tmp}/t.db", "redis://127.0.0.1:6379/0"])
@pytest.mark.asyncio
async def test_using_a_backend_before_opening_it_is_the_same_error_everywhere(
    url: str, tmp_path: Path
) -> None:
    wf = Workflow("w").step("s", lambda ctx: None)
    engine = Engine.from_url(url.format(tmp=tmp_path), workflows=[wf])
    with pytest.raises(BackendNotOpenError, match=r"not open; use `async with engine:`"):
        await engine.submit(wf)
    with pytest.raises(BackendNotOpenError):
        await engine.get_task("0" * 32)
    async with engine:
        assert await engine.get_task("0" * 32) is None
    with pytest.raises(BackendNotOpenError):
        await engine.submit(wf)


# -- UrlOptions: the query-option rules every backend shares ------------------------------------

URL = "acme://user:hunter2@host/db"


def options(query: str, **keywords: object) -> config_module.UrlOptions:
    known = ("name", "verbose", "pool", "timeout", "mode")
    return config_module.UrlOptions(URL, query, keywords, known=known, kind="acme")


def test_url_options_convert_text_flags_counts_and_seconds() -> None:
    given = options("name=a%20b&verbose=yes&pool=4&timeout=2.5&mode=FAST")
    assert given.text("name", "x") == "a b"
    assert given.flag("verbose", False) is True
    assert given.count("pool", 1) == 4
    assert given.seconds("timeout", None) == 2.5
    assert given.choice("mode", "slow", ["slow", "fast"]) == "fast"
    assert "pool" in given
    assert "missing" not in given


def test_url_options_fall_back_to_defaults() -> None:
    given = options("")
    assert given.text("name", "x") == "x"
    assert given.flag("verbose", False) is False
    assert given.count("pool", 10) == 10
    assert given.seconds("timeout", None) is None
    assert given.seconds("timeout", 3.0) == 3.0


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False), ("off", False), ("", False)],
)
def test_url_option_flags_read_the_usual_spellings(text: str, value: bool) -> None:
    assert options(f"verbose={text}").flag("verbose", not value) is value


def test_keyword_options_join_the_url_options_with_their_own_types() -> None:
    given = options("name=a", pool=8, verbose=True, timeout=0.5)
    assert given.text("name", "x") == "a"
    assert given.count("pool", 1) == 8
    assert given.flag("verbose", False) is True
    assert given.seconds("timeout", None) == 0.5


@pytest.mark.parametrize(
    ("query", "keywords", "message"),
    [
        ("pool=1&pool=2", {}, "option 'pool' is given twice"),
        ("pool=1", {"pool": 2}, "option 'pool' is given both in the URL and as a keyword; give it once"),
        ("colour=red", {}, r"unknown option\(s\) \['colour'\]; known: mode, name, pool, timeout, verbose"),
        ("", {"colour": "red"}, r"unknown option\(s\) \['colour'\]"),
    ],
)
def test_url_options_refuse_repeats_and_unknown_names(
    query: str, keywords: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        options(query, **keywords)
    assert str(info.value).startswith("invalid acme URL 'acme://user:***@host/db': ")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("query", "read", "message"),
    [
        ("pool=many", lambda o: o.count("pool", 1), "pool must be a whole number, not 'many'"),
        ("pool=0", lambda o: o.count("pool", 1), "pool must be at least 1, not '0'"),
        ("timeout=soon", lambda o: o.seconds("timeout", None), "timeout must be a number of seconds, not"),
        ("timeout=0", lambda o: o.seconds("timeout", None), "number of seconds above 0, not '0'"),
        ("timeout=-1", lambda o: o.seconds("timeout", None, zero=True), "0 or more, not '-1'"),
        ("timeout=nan", lambda o: o.seconds("timeout", None), "timeout must be a number of seconds above 0"),
        ("timeout=inf", lambda o: o.seconds("timeout", None), "timeout must be a number of seconds above 0"),
        ("verbose=maybe", lambda o: o.flag("verbose", False), "verbose must be true or false, not 'maybe'"),
        ("mode=warp", lambda o: o.choice("mode", "slow", ["slow", "fast"]), "mode must be one of slow, fast"),
    ],
)
def test_bad_url_option_values_are_refused_naming_the_option(query: str, read: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        read(options(query))
    assert "acme://user:***@host/db" in str(info.value)


def test_zero_seconds_is_accepted_only_where_allowed() -> None:
    assert options("timeout=0").seconds("timeout", None, zero=True) == 0.0
