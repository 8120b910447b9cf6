"""A user's app with the dashboard mounted inside it, for `uvicorn tests.dashboard.mounted:app`
(the backend URL and the mount path come from the environment the test sets)."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from salvador_core.dashboard import create_app


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the user's own app")


app = Starlette(routes=[
    Route("/", home),
    Mount(os.environ["DASHBOARD_TEST_PREFIX"],
          create_app(os.environ["DASHBOARD_TEST_URL"], app="tests.dashboard.app:workflows")),
])
