"""salvador's web dashboard (issue 17): overview, tasks, task pages and dead letters, with
requeue, discard and cancel behind CSRF tokens, optional auth and a read-only mode.

Needs the `dashboard` extra (`pip install 'salvador-workflows[dashboard]'`: Starlette,
Jinja2, uvicorn). `salvador dashboard --url URL` serves it; `create_app(...)` returns the
ASGI app to mount in your own. docs/dashboard.md explains both and the security model.
"""

from salvador_core.dashboard.app import create_app
from salvador_core.dashboard.security import Auth, check_bind
from salvador_core.dashboard.server import serve

__all__ = ["Auth", "check_bind", "create_app", "serve"]
