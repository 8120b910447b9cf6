"""The dashboard as an ASGI application (Starlette + Jinja2): `create_app`.

Every page has a JSON twin under `/api/` that returns its data and its refreshed HTML
fragment (rendered by the same autoescaping template), which static/dashboard.js fetches
every few seconds, so views stay current without reloading and without a second renderer
that could forget to escape. Mutations (requeue, discard, cancel) are form POSTs checked
against a CSRF token (security.py) and answered with a redirect back to the page.

The app opens its engine on first use rather than in a lifespan handler: a Starlette app
mounted inside another app never receives lifespan events. When the app itself built the
engine from a URL it closes it on lifespan shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from salvador_core.admin import admin_engine, backend_location, load_workflows
from salvador_core.dashboard import views
from salvador_core.dashboard.security import CSRF_COOKIE, CSRF_FIELD, CSRF_HEADER, Auth, CsrfTokens
from salvador_core.dashboard.timerange import TimeRange, TimeRangeError
from salvador_core.engine import Engine
from salvador_core.errors import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidStateError,
    SalvadorError,
    TaskNotFoundError,
    UnknownWorkflowError,
)
from salvador_core.task import DEAD_LETTER_STATUSES, Page, TaskStatus, utcnow

#: Rows per page of a listing.
PAGE_SIZE = 50
#: How often the pages fetch fresh data, in seconds (the JS reads it from the page).
REFRESH_SECONDS = 3.0
#: A form body larger than this is refused: the forms hold a token and a step name.
MAX_FORM_BYTES = 4096

_HERE = Path(__file__).parent
_STATUSES = [s.value for s in TaskStatus]
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


class HttpError(Exception):
    """A refusal with its status code and a message for the operator."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Dashboard:
    """The state behind the routes: the engine, the options and the CSRF secret."""

    def __init__(self, engine: Engine, *, owns_engine: bool, read_only: bool, show_payloads: bool,
                 tracing_url: str | None) -> None:
        self.engine = engine
        self.owns_engine = owns_engine
        self.read_only = read_only
        self.show_payloads = show_payloads
        self.tracing_url = tracing_url
        self.csrf = CsrfTokens()
        self.where = backend_location(engine)
        self._opened = False
        self._open_lock = asyncio.Lock()
        self.templates = Environment(
            loader=FileSystemLoader(_HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,  # a missing variable is a bug, not an empty cell
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.globals["completion_chart"] = views.completion_chart

    async def ready(self) -> Engine:
        """The engine, opened on first use (once, however many requests arrive at once)."""
        if not self._opened:
            async with self._open_lock:
                if not self._opened:
                    await self.engine.open()
                    self._opened = True
        return self.engine

    async def close(self) -> None:
        if self._opened and self.owns_engine:
            self._opened = False
            await self.engine.close()

    # -- rendering ------------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        token = self._token(request)
        html = self.templates.get_template(template).render(**self._context(request, token), **context)
        return self._finish(request, HTMLResponse(html, status_code=status), token)

    def fragment(self, request: Request, template: str, data: Any, **context: Any) -> Response:
        """The JSON twin of a page: its data and its refreshed fragment."""
        token = self._token(request)
        page = self.templates.get_template(template)
        variables = {**self._context(request, token), **context}
        html = "".join(page.blocks["fragment"](page.new_context(variables)))
        return self._finish(request, JSONResponse({"data": data, "html": html}), token)

    def _context(self, request: Request, token: str) -> dict[str, Any]:
        return {
            "base": base_path(request),
            "where": self.where,
            "read_only": self.read_only,
            "show_payloads": self.show_payloads,
            "csrf_field": CSRF_FIELD,
            "csrf_token": token,
            "refresh_ms": int(REFRESH_SECONDS * 1000),
            "statuses": _STATUSES,
            "api_url": api_url(request),
        }

    def _token(self, request: Request) -> str:
        cookie = request.cookies.get(CSRF_COOKIE)
        return cookie if cookie and self.csrf.valid(cookie) else self.csrf.issue()

    def _finish(self, request: Request, response: Response, token: str) -> Response:
        if request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(CSRF_COOKIE, token, path=base_path(request) or "/", httponly=True,
                                samesite="strict", secure=request.url.scheme == "https")
        return response

    # -- mutations ------------------------------------------------------------------------

    async def checked_form(self, request: Request) -> dict[str, str]:
        """The POSTed form, after the read-only and CSRF checks (403 when either refuses)."""
        if self.read_only:
            raise HttpError(403, "this dashboard is read-only (started with --read-only)")
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise HttpError(413, f"form too large ({len(body)} bytes; at most {MAX_FORM_BYTES})")
        try:
            pairs = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise HttpError(400, "the form is not UTF-8 text") from None
        form = {key: values[-1] for key, values in pairs.items()}
        submitted = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not self.csrf.accepts(request.cookies.get(CSRF_COOKIE), submitted):
            raise HttpError(403, "missing or invalid CSRF token: reload the page and try again")
        return form


def api_url(request: Request) -> str:
    """The JSON twin of the page being rendered (`/tasks?x` → `/api/tasks?x`)."""
    base = base_path(request)
    if _is_api(request):
        return str(request.url.path) + (f"?{request.url.query}" if request.url.query else "")
    relative = request.url.path[len(base):] or "/"
    path = base + "/api" + ("/overview" if relative == "/" else relative)
    query = [(k, v) for k, v in request.query_params.multi_items() if k not in ("done", "discarded")]
    return path + (f"?{urlencode(query)}" if query else "")


def base_path(request: Request) -> str:
    """Where the dashboard is mounted ('' at the root), for links and the cookie path."""
    return str(request.scope.get("root_path", "")).rstrip("/")


# -- routes -------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def _dash(request: Request) -> Dashboard:
    dash: Dashboard = request.app.state.dashboard
    return dash


def _refusals(handler: Handler) -> Handler:
    """Turn the errors an operator can act on into a page (or JSON for /api) with the
    right status; anything else is a bug and propagates."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except HttpError as exc:
            status, message = exc.status, exc.message
        except TaskNotFoundError as exc:
            status, message = 404, str(exc)
        except (InvalidStateError, UnknownWorkflowError) as exc:
            status, message = 409, str(exc)
        except BackendUnavailableError as exc:
            status, message = 503, f"the backend cannot be reached: {exc}"
        except SalvadorError as exc:
            status, message = 400, str(exc)
        if request.url.path.startswith(base_path(request) + "/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return _dash(request).render(request, "error.html", status=status, status_code=status,
                                     message=message)

    return wrapped


async def overview_page(request: Request) -> Response:
    dash = _dash(request)
    rows = await views.overview(await dash.ready())
    if _is_api(request):
        return dash.fragment(request, "overview.html", rows, rows=rows)
    return dash.render(request, "overview.html", rows=rows)


def _filters(request: Request) -> dict[str, Any]:
    """The listing's filters from the query; `error` says why they cannot be applied (an
    unknown status, a `from` or `to` that is not a time), None when they can."""
    query = request.query_params
    statuses = [s for s in query.getlist("status") if s]
    filters: dict[str, Any] = {
        "workflow": query.get("workflow", "").strip() or None,
        "status": [s for s in statuses if s in _STATUSES],
        "id": query.get("id", "").strip() or None,
        "cursor": query.get("cursor") or None,
        "from_text": query.get("from", "").strip(),
        "to_text": query.get("to", "").strip(),
        "range": None,
        "error": None,
    }
    unknown = [s for s in statuses if s not in _STATUSES]
    if unknown:
        filters["error"] = f"unknown status {unknown[0]!r}; choose one of {', '.join(_STATUSES)}"
        return filters
    try:
        filters["range"] = TimeRange.parse(filters["from_text"], filters["to_text"], now=utcnow())
    except TimeRangeError as exc:
        filters["error"] = str(exc)
    return filters


async def _task_page(engine: Engine, filters: dict[str, Any], *, dead_letters: bool = False) -> Page:
    span: TimeRange | None = filters["range"]
    if filters["id"]:
        task = await engine.get_task(filters["id"])
        matches = task is not None and (filters["workflow"] in (None, task.workflow)) and (
            not filters["status"] or task.status.value in filters["status"])
        if task is not None and dead_letters:
            matches = matches and task.status in DEAD_LETTER_STATUSES
        if task is not None and span is not None:
            matches = matches and span.holds(task.id)
        return Page([task] if task is not None and matches else [], None)
    wanted: Any = [TaskStatus(s) for s in filters["status"]] or None
    if dead_letters:
        wanted = wanted or DEAD_LETTER_STATUSES
    if span is None:
        return await engine.list_tasks(workflow=filters["workflow"], status=wanted, limit=PAGE_SIZE,
                                       cursor=filters["cursor"])
    return await _page_in_range(engine, span, workflow=filters["workflow"], status=wanted,
                                cursor=filters["cursor"])


async def _page_in_range(engine: Engine, span: TimeRange, *, workflow: str | None, status: Any,
                         cursor: str | None) -> Page:
    """One page of the tasks created within `span` (timerange.py): the listing starts at
    the range's first id (or at `cursor`, where the previous page ended) and what lies past
    its end is dropped. A task more than a page is asked for, so that a next page is
    offered only when it holds something; its cursor is the last id shown, which is what
    every backend's cursor is."""
    start = span.cursor
    if cursor is not None and (start is None or cursor > start):
        start = cursor
    page = await engine.list_tasks(workflow=workflow, status=status, limit=PAGE_SIZE + 1, cursor=start)
    inside = [t for t in page.tasks if span.holds(t.id)]
    shown = inside[:PAGE_SIZE]
    return Page(shown, shown[-1].id if len(inside) > PAGE_SIZE else None)


def _page_context(filters: dict[str, Any], page: Page) -> dict[str, Any]:
    kept = (("workflow", filters["workflow"]), ("id", filters["id"]), ("from", filters["from_text"]),
            ("to", filters["to_text"]))
    query = [*((k, v) for k, v in kept if v), *(("status", s) for s in filters["status"])]
    return {
        "filters": filters,
        "tasks": [views.summary(t) for t in page.tasks],
        "next_query": urlencode([*query, ("cursor", page.cursor)]) if page.cursor else None,
        "first_query": urlencode(query) if filters["cursor"] else None,
    }


def _listing_data(context: dict[str, Any], page: Page) -> dict[str, Any]:
    """The JSON twin's data of a listing: the rows, the next cursor, the range applied."""
    span: TimeRange | None = context["filters"]["range"]
    return {"tasks": context["tasks"], "cursor": page.cursor,
            "range": None if span is None else span.to_dict()}


def _refuse_filters(dash: Dashboard, request: Request, template: str, filters: dict[str, Any],
                    **context: Any) -> Response:
    """Filters that cannot be applied: a 400 with the reason, as JSON for the twin, else
    the page again with the form as filled in and the reason beside it (nothing listed,
    nothing refreshed)."""
    if _is_api(request):
        raise HttpError(400, filters["error"])
    return dash.render(request, template, status=400, filters=filters, tasks=[], next_query=None,
                       first_query=None, **context)


async def tasks_page(request: Request) -> Response:
    dash = _dash(request)
    filters = _filters(request)
    if filters["error"]:
        return _refuse_filters(dash, request, "tasks.html", filters)
    page = await _task_page(await dash.ready(), filters)
    context = _page_context(filters, page)
    if _is_api(request):
        return dash.fragment(request, "tasks.html", _listing_data(context, page), **context)
    return dash.render(request, "tasks.html", **context)


async def dead_letters_page(request: Request) -> Response:
    dash = _dash(request)
    filters = _filters(request)
    if filters["error"]:
        return _refuse_filters(dash, request, "dead_letters.html", filters, known_workflows=set(), done=None)
    engine = await dash.ready()
    page = await _task_page(engine, filters, dead_letters=True)
    context = {**_page_context(filters, page), "known_workflows": set(engine.workflows)}
    discarded = request.query_params.get("discarded")
    context["done"] = f"Discarded task {discarded}." if discarded else None
    if _is_api(request):
        return dash.fragment(request, "dead_letters.html", _listing_data(context, page), **context)
    return dash.render(request, "dead_letters.html", **context)


async def task_page(request: Request) -> Response:
    dash = _dash(request)
    engine = await dash.ready()
    task_id = request.path_params["task_id"]
    task = await engine.get_task(task_id)
    if task is None:
        raise TaskNotFoundError(task_id)
    detail = views.task_detail(task, engine.workflows.get(task.workflow), show_payloads=dash.show_payloads,
                               tracing_url=dash.tracing_url)
    done = _DONE.get(request.query_params.get("done", ""))
    if _is_api(request):
        return dash.fragment(request, "task.html", detail, task=detail, done=None)
    return dash.render(request, "task.html", task=detail, done=done)


#: Confirmations shown after a redirect (`?done=`); fixed texts, so nothing user-made is echoed.
_DONE = {
    "requeued": "Requeued: the task is pending again and a worker will pick it up.",
    "cancelled": "Cancel requested: the task runs no further step.",
}


async def requeue_action(request: Request) -> Response:
    dash = _dash(request)
    form = await dash.checked_form(request)
    engine = await dash.ready()
    task_id = request.path_params["task_id"]
    task = await engine.get_task(task_id)
    if task is None:
        raise TaskNotFoundError(task_id)
    if task.workflow not in engine.workflows:
        raise HttpError(409, f"requeue needs the steps of workflow {task.workflow!r}: start the "
                             "dashboard with --app MODULE:ATTR naming the workflows")
    choice = form.get("from_step", "").strip()
    from_step: int | None = None
    if choice:
        if not choice.isdigit():
            raise HttpError(400, "from_step must be a step number (1 = the first step)")
        from_step = int(choice) - 1
    await engine.requeue(task_id, from_step=from_step)
    return _back(request, f"/tasks/{task_id}?done=requeued")


async def discard_action(request: Request) -> Response:
    dash = _dash(request)
    await dash.checked_form(request)
    engine = await dash.ready()
    task_id = request.path_params["task_id"]
    if not await engine.discard(task_id):
        raise TaskNotFoundError(task_id)
    return _back(request, "/dead-letters?" + urlencode({"discarded": task_id}))


async def cancel_action(request: Request) -> Response:
    dash = _dash(request)
    await dash.checked_form(request)
    engine = await dash.ready()
    task_id = request.path_params["task_id"]
    task = await engine.get_task(task_id)
    if task is None:
        raise TaskNotFoundError(task_id)
    if task.status.terminal:
        raise HttpError(409, f"task {task_id} already finished ({task.status.value}); nothing to cancel")
    if task.status is TaskStatus.PENDING and task.step > 0 and task.workflow not in engine.workflows:
        raise HttpError(409, f"task {task_id} completed {task.step} step(s) of {task.workflow!r}; "
                             "cancelling it needs that workflow to know which to compensate: start "
                             "the dashboard with --app MODULE:ATTR")
    await engine.cancel(task_id)
    return _back(request, f"/tasks/{task_id}?done=cancelled")


def _back(request: Request, target: str) -> Response:
    """303 to a page of this dashboard (never to a URL taken from the request)."""
    path = urlsplit(target)
    location = base_path(request) + path.path + (f"?{path.query}" if path.query else "")
    return RedirectResponse(location, status_code=303)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(base_path(request) + "/api/")


# -- the application ----------------------------------------------------------------------


class _Guard:
    """Auth in front of everything (static files included), and the security headers on
    every response."""

    def __init__(self, app: ASGIApp, auth: Auth | None) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.auth is not None:
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not self.auth.allows(given):
                refusal = Response("authentication required\n", status_code=401, media_type="text/plain",
                                   headers={"www-authenticate": 'Basic realm="salvador", charset="UTF-8"',
                                            **_SECURITY_HEADERS})
                await refusal(scope, receive, send)
                return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    engine_or_url: Engine | str | None,
    *,
    read_only: bool = False,
    show_payloads: bool = False,
    auth: Auth | str | None = None,
    tracing_url: str | None = None,
    app: str | None = None,
) -> Starlette:
    """The dashboard as an ASGI app, to serve (`salvador dashboard`) or to mount in your own
    (`Mount("/salvador", create_app(engine, auth="..."))`).

    `engine_or_url`: an `Engine` (its workflows make requeue possible; the app opens it on
    first use and leaves closing it to you) or a backend URL, None meaning `$SALVADOR_URL`
    (the app builds, opens and closes its own quiet engine, with the workflows of `app`,
    "MODULE:ATTR", if given).
    `read_only` hides and refuses every mutation; `show_payloads` shows task bodies and
    step results (sizes only otherwise); `auth` is "TOKEN", "user:pass" or an `Auth`;
    `tracing_url` links trace ids, with `{trace_id}` where the id goes.
    """
    if tracing_url is not None and urlsplit(tracing_url).scheme not in ("http", "https"):
        raise ConfigurationError(f"tracing_url must be an http(s) URL, got {tracing_url!r}")
    owns = not isinstance(engine_or_url, Engine)
    if app is not None and not owns:
        raise ConfigurationError("pass app='MODULE:ATTR' only with a URL; an Engine brings its own workflows")
    engine = (engine_or_url if isinstance(engine_or_url, Engine)
              else admin_engine(engine_or_url, load_workflows(app)))
    dash = Dashboard(engine, owns_engine=owns, read_only=read_only, show_payloads=show_payloads,
                     tracing_url=tracing_url)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await dash.close()

    pages: list[tuple[str, Handler]] = [
        ("/", overview_page), ("/tasks", tasks_page), ("/tasks/{task_id}", task_page),
        ("/dead-letters", dead_letters_page),
    ]
    routes: list[Route | Mount] = []
    for path, handler in pages:
        routes.append(Route(path, _refusals(handler), methods=["GET"]))
        api = "/api" + (path if path != "/" else "/overview")
        routes.append(Route(api, _refusals(handler), methods=["GET"]))
    for name, action in (("requeue", requeue_action), ("discard", discard_action), ("cancel", cancel_action)):
        routes.append(Route(f"/tasks/{{task_id}}/{name}", _refusals(action), methods=["POST"]))
    routes.append(Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"))
    starlette = Starlette(routes=routes, lifespan=lifespan)
    starlette.state.dashboard = dash
    given_auth = Auth.parse(auth) if isinstance(auth, str) else auth
    starlette.add_middleware(_Guard, auth=given_auth)
    return starlette
