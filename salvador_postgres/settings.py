"""`postgresql://` URLs: what to connect to and how, parsed once, password kept out of sight.

The URL is libpq's (`postgresql://user:password@host:5432/db`, also `postgres://`), plus
salvador's own query options. libpq parameters users expect are honoured (`sslmode`,
`sslrootcert`, `sslcert`, `sslkey`, `sslcrl`, `application_name`, `connect_timeout`,
`target_session_attrs`); any other option is refused by name, never sent to the server as
a run-time setting by mistake (asyncpg would do that with an unknown query parameter).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from salvador_core.config import UrlOptions, redact_url
from salvador_core.errors import ConfigurationError

DEFAULT_SCHEMA = "salvador"

#: libpq TLS and routing parameters handed to asyncpg in the DSN, as libpq spells them.
LIBPQ_DSN_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "target_session_attrs")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

#: Every query option (and `from_url` keyword option) the backend understands.
OPTIONS = (
    "schema", "pool_size", "statement_cache_size", "listen", "migrate", "poll_interval",
    "application_name", "connect_timeout", *LIBPQ_DSN_OPTIONS,
)

#: Longest schema name PostgreSQL keeps (NAMEDATALEN - 1 bytes); longer ones are truncated
#: silently by the server, so two long names could meet in one schema.
_MAX_IDENTIFIER = 63


def quote_ident(name: str) -> str:
    """`name` as a quoted SQL identifier (any character allowed, quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Settings:
    """Where and how to connect, from a URL. Neither repr() nor `where` shows the password."""

    where: str  # the redacted URL, for messages and repr()
    dsn: str = field(repr=False)  # host, port, user, password, database and libpq TLS options
    schema: str
    pool_size: int
    statement_cache_size: int
    listen: bool
    #: True: bring the schema up to date on open; False: never run DDL; None (the default):
    #: create a schema that does not exist yet, refuse to upgrade an older one.
    migrate: bool | None
    poll_interval: float
    application_name: str
    connect_timeout: float

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this schema (a channel name holds 63 bytes at most,
        so a long schema name is shortened and a hash keeps it apart from its neighbours)."""
        digest = hashlib.sha1(self.schema.encode()).hexdigest()[:10]
        return f"salvador:{self.schema[:30]}:{digest}"

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `asyncpg.connect` and `asyncpg.create_pool`."""
        return {
            "dsn": self.dsn,
            "statement_cache_size": self.statement_cache_size,
            "timeout": self.connect_timeout,
            "server_settings": {"application_name": self.application_name},
        }


def parse_url(url: str, options: dict[str, Any]) -> Settings:
    """Settings from `url` and keyword `options`; `ConfigurationError` (URL redacted) when
    something is wrong, saying what."""
    if not isinstance(url, str):
        raise ConfigurationError(f"a PostgreSQL URL must be a string, got {type(url).__name__}")
    where = redact_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ConfigurationError(
            f"invalid PostgreSQL URL {where!r}: {exc}; expected "
            "postgresql://user:password@host:5432/database?schema=salvador"
        ) from None
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigurationError(
            f"invalid PostgreSQL URL {where!r}: the scheme must be postgresql:// or postgres://"
        )
    if parts.fragment:
        raise ConfigurationError(
            f"invalid PostgreSQL URL {where!r}: remove the #fragment (or percent-encode '#')"
        )
    opts = UrlOptions(url, parts.query, options, known=OPTIONS, kind="PostgreSQL")
    database = unquote(parts.path.lstrip("/"))
    if "/" in database:
        raise opts.error(f"the path must be one database name, not {database!r}")
    schema = opts.text("schema", DEFAULT_SCHEMA)
    if not schema or len(schema.encode()) > _MAX_IDENTIFIER or "\x00" in schema:
        raise opts.error(f"schema must be a name of 1 to {_MAX_IDENTIFIER} bytes, not {schema!r}")
    if schema.startswith("pg_"):
        raise opts.error(f"schema {schema!r} starts with 'pg_', which PostgreSQL reserves; choose another")
    dsn_query = []
    for name in LIBPQ_DSN_OPTIONS:
        if name in opts:
            value = opts.text(name, "")
            if name == "sslmode" and value not in _SSLMODES:
                raise opts.error(f"sslmode must be one of {', '.join(_SSLMODES)}, not {value!r}")
            dsn_query.append(f"{name}={quote(value, safe='')}")
    migrate = opts.flag("migrate", False) if "migrate" in opts else None
    application_name = opts.text("application_name", "salvador")
    if re.search(r"[^\x20-\x7e]", application_name):
        raise opts.error("application_name must be printable ASCII (PostgreSQL replaces anything else)")
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, "&".join(dsn_query), ""))
    return Settings(
        where=where,
        dsn=dsn,
        schema=schema,
        pool_size=opts.count("pool_size", 10),
        statement_cache_size=opts.count("statement_cache_size", 100, minimum=0),
        listen=opts.flag("listen", True),
        migrate=migrate,
        poll_interval=float(opts.seconds("poll_interval", 0.5) or 0.5),
        application_name=application_name,
        connect_timeout=float(opts.seconds("connect_timeout", 10.0) or 10.0),
    )
