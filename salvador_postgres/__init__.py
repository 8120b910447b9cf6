"""salvador's PostgreSQL backend: `postgresql://user:password@host:5432/db?schema=salvador`.

Records and queue in one table per schema, claims with `FOR UPDATE SKIP LOCKED`, idle
workers woken by LISTEN/NOTIFY, transactional submit on the caller's connection
(`Engine.submit(..., connection=conn)`), versioned migrations. See docs/backends/postgres.md.
"""

from salvador_postgres.backend import PostgresBackend
from salvador_postgres.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "PostgresBackend"]
