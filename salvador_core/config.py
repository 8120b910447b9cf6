"""Backends chosen by URL. Schemes are looked up in the `salvador.backends` entry-point
group, so a third-party package adds a scheme exactly the way ours do."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from salvador_core.errors import ConfigurationError

ENTRY_POINT_GROUP = "salvador.backends"

#: The distribution on the package index (`salvador` there is an unrelated project).
DISTRIBUTION = "salvador-workflows"

#: Which extra installs the driver for a scheme we ship, for the "pip install" hint.
_EXTRAS = {
    "redis": "redis", "rediss": "redis", "postgresql": "postgres", "postgres": "postgres",
    "nats": "nats", "tls": "nats",
}
#: Schemes of backends that are designed but not released yet, so no extra can help.
_PLANNED: dict[str, str] = {}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, safe for logs, errors and repr()."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def connect(url: str | None = None, **options: Any) -> Any:
    """The backend object for `url` (default: `$SALVADOR_URL`), not yet opened.

    Raises `ConfigurationError` for a missing or malformed URL, an unknown scheme, or a
    scheme whose driver extra is not installed.
    """
    if url is None:
        url = os.environ.get("SALVADOR_URL")
        if not url:
            raise ConfigurationError(
                "no backend URL given and $SALVADOR_URL is not set; pass one, e.g. "
                "'sqlite:///salvador.db', 'memory://', 'redis://localhost:6379/0'."
            )
    if not isinstance(url, str):
        raise ConfigurationError(f"a backend URL must be a string, got {type(url).__name__}")
    match = _SCHEME.match(url)
    if match is None:
        raise ConfigurationError(
            f"{redact_url(url)!r} is not a backend URL: it needs a scheme such as "
            "'sqlite:///path.db', 'memory://', 'redis://host:6379/0', "
            "'postgresql://user@host/db' or 'nats://host:4222'."
        )
    scheme = match.group(1).lower()
    factory = _load_scheme(scheme, url)
    try:
        return factory.from_url(url, **options)
    except ConfigurationError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"invalid {scheme}:// URL {redact_url(url)!r}: {exc}") from None


def known_schemes() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def _load_scheme(scheme: str, url: str) -> Any:
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == scheme]
    if not matches:
        hint = ""
        if scheme in _EXTRAS:
            hint = f" Install it with: pip install '{DISTRIBUTION}[{_EXTRAS[scheme]}]'."
        elif scheme in _PLANNED:
            hint = (
                f" salvador has no {_PLANNED[scheme]} backend yet (it is planned); use "
                "sqlite:///, redis:// or memory:// for now."
            )
        raise ConfigurationError(
            f"no salvador backend handles the {scheme}:// scheme of {redact_url(url)!r} "
            f"(installed: {', '.join(known_schemes()) or 'none'}).{hint}"
        )
    entry = matches[0]
    try:
        return entry.load()
    except ImportError as exc:
        if scheme in _EXTRAS:
            fix = f"install it with: pip install '{DISTRIBUTION}[{_EXTRAS[scheme]}]'"
        else:
            provider = entry.dist.name if entry.dist is not None else f"the package providing {entry.value}"
            fix = f"reinstall {provider} with the extras its documentation names"
        raise ConfigurationError(f"the {scheme}:// backend cannot load its driver ({exc}); {fix}") from None


class UrlOptions:
    """A backend URL's query options merged with keyword options, and the checks every
    backend applies to them: an option given twice (in the query, or in the query and as a
    keyword) or unknown is refused, and values are converted with errors that name the
    option and the URL, its password redacted."""

    def __init__(
        self, url: str, query: str, options: Mapping[str, Any], *, known: Iterable[str], kind: str
    ) -> None:
        self.kind = kind
        self.where = redact_url(url)
        self.values: dict[str, Any] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key in self.values:
                raise self.error(f"option {key!r} is given twice")
            self.values[key] = value
        for key, value in options.items():
            if key in self.values:
                raise self.error(f"option {key!r} is given both in the URL and as a keyword; give it once")
            self.values[key] = value
        known_names = sorted(known)
        unknown = sorted(set(self.values) - set(known_names))
        if unknown:
            raise self.error(f"unknown option(s) {unknown}; known: {', '.join(known_names)}")

    def error(self, problem: str) -> ConfigurationError:
        return ConfigurationError(f"invalid {self.kind} URL {self.where!r}: {problem}")

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def text(self, name: str, default: str) -> str:
        return str(self.values.get(name, default))

    def seconds(self, name: str, default: float | None, *, zero: bool = False) -> float | None:
        """A number of seconds above 0 (or 0 or more with `zero`), finite."""
        value = self.values.get(name, default)
        if value is None:
            return None
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise self.error(f"{name} must be a number of seconds, not {value!r}") from None
        if math.isnan(seconds) or math.isinf(seconds) or seconds < 0 or (seconds == 0 and not zero):
            bound = "0 or more" if zero else "above 0"
            raise self.error(f"{name} must be a number of seconds {bound}, not {value!r}")
        return seconds

    def count(self, name: str, default: int, *, minimum: int = 1) -> int:
        value = self.values.get(name, default)
        try:
            count = int(value)
        except (TypeError, ValueError):
            raise self.error(f"{name} must be a whole number, not {value!r}") from None
        if count < minimum:
            raise self.error(f"{name} must be at least {minimum}, not {value!r}")
        return count

    def flag(self, name: str, default: bool) -> bool:
        value = self.values.get(name, default)
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise self.error(f"{name} must be true or false, not {value!r}")

    def choice(self, name: str, default: str, choices: Iterable[str]) -> str:
        allowed = list(choices)
        value = str(self.values.get(name, default)).lower()
        if value not in allowed:
            raise self.error(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        return value
