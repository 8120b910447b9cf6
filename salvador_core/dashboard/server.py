"""`salvador dashboard`: build the app and serve it with uvicorn until Ctrl-C or SIGTERM."""

from __future__ import annotations

import click
import uvicorn

from salvador_core.dashboard.app import create_app
from salvador_core.dashboard.security import Auth, check_bind


def serve(url: str | None, *, host: str, port: int, auth: str | None, app: str | None, read_only: bool,
          show_payloads: bool, tracing_url: str | None) -> None:
    """Check the bind address against the credentials first (a refusal is one line and
    nothing is opened), then serve until stopped."""
    credentials = Auth.parse(auth) if auth else None
    check_bind(host, credentials)
    asgi = create_app(url, read_only=read_only, show_payloads=show_payloads, auth=credentials,
                      tracing_url=tracing_url, app=app)
    shown_host = f"[{host}]" if ":" in host else host
    modes = ", ".join(m for m, on in (("read-only", read_only), ("payloads shown", show_payloads),
                                      ("auth required", credentials is not None)) if on)
    where = asgi.state.dashboard.where
    click.echo(f"salvador dashboard: {where} on http://{shown_host}:{port}/"
               + (f" ({modes})" if modes else "") + "; Ctrl-C stops", err=True)
    uvicorn.run(asgi, host=host, port=port, log_level="warning", access_log=False,
                server_header=False, proxy_headers=False)
