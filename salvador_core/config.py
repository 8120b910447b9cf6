"""Backends chosen by URL. Schemes are looked up in the `salvador.backends` entry-point
group, so a third-party package adds a scheme exactly the way ours do."""

from __future__ import annotations

import os
import re
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from salvador_core.errors import ConfigurationError

ENTRY_POINT_GROUP = "salvador.backends"

#: Which extra installs the driver for a scheme we ship, for the "pip install" hint.
_EXTRAS = {"redis": "redis", "rediss": "redis"}
#: Schemes of backends that are designed but not released yet, so no extra can help.
_PLANNED = {"postgresql": "PostgreSQL", "postgres": "PostgreSQL", "nats": "NATS JetStream"}
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
            hint = f" Install it with: pip install 'salvador[{_EXTRAS[scheme]}]'."
        elif scheme in _PLANNED:
            hint = (
                f" salvador has no {_PLANNED[scheme]} backend yet (it is planned); use "
                "sqlite:///, redis:// or memory:// for now."
            )
        raise ConfigurationError(
            f"no salvador backend handles the {scheme}:// scheme of {redact_url(url)!r} "
            f"(installed: {', '.join(known_schemes()) or 'none'}).{hint}"
        )
    try:
        return matches[0].load()
    except ImportError as exc:
        extra = _EXTRAS.get(scheme, scheme)
        raise ConfigurationError(
            f"the {scheme}:// backend cannot load its driver ({exc}); install it with: "
            f"pip install 'salvador[{extra}]'"
        ) from None
