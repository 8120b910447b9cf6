"""What the dashboard refuses, tried over HTTP against a real server: POSTs without the CSRF
token, mutations in read-only mode, requests without credentials, a non-loopback bind
without --auth, requeue without the workflows; and what it never shows: payloads unless
asked, markup as markup, the backend password."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import httpx
import pytest

from salvador_core import ConfigurationError, TaskStatus
from salvador_core.dashboard import Auth, check_bind, create_app
from salvador_core.dashboard.security import CSRF_COOKIE, CsrfTokens
from tests.dashboard.app import HOSTILE_RESULT, Seeded
from tests.dashboard.conftest import run_async, stored
from tests.dashboard.servers import ROOT, Servers
from tests.helpers.redis_servers import delete_prefix, shared_redis_url, unique

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def _token_of(client: httpx.Client, path: str) -> str:
    """GET a page as the browser would, and read the CSRF token from its form."""
    response = client.get(path)
    assert response.status_code == 200, response.text
    match = _TOKEN.search(response.text)
    assert match is not None, "the page has no form with a CSRF token"
    assert client.cookies.get(CSRF_COOKIE) == match.group(1)
    return match.group(1)


def test_post_without_a_valid_csrf_token_is_refused(servers: Servers, sqlite_url: str,
                                                   seeded_sqlite: Seeded) -> None:
    server = servers.dashboard(sqlite_url)
    path = f"/tasks/{seeded_sqlite.failed}"
    with httpx.Client(base_url=server.url) as client:
        token = _token_of(client, path)
        forged = token.split(".")[0] + "." + "0" * 64
        attempts = {
            "no token": ({}, token),
            "token not the cookie's": ({"csrf_token": CsrfTokens().issue()}, token),
            "forged signature in both": ({"csrf_token": forged}, forged),
            "no cookie": ({"csrf_token": token}, None),
        }
        for what, (form, cookie) in attempts.items():
            client.cookies.clear()
            if cookie is not None:
                client.cookies.set(CSRF_COOKIE, cookie)
            response = client.post(path + "/discard", data=form)
            assert response.status_code == 403, what
            assert "CSRF" in response.text, what
        client.cookies.set(CSRF_COOKIE, token)
        assert stored(sqlite_url, seeded_sqlite.failed) is not None  # nothing was discarded
        response = client.post(path + "/discard", data={"csrf_token": token})
        assert response.status_code == 303
        assert response.headers["location"] == f"/dead-letters?discarded={seeded_sqlite.failed}"
    assert stored(sqlite_url, seeded_sqlite.failed) is None


def test_read_only_hides_and_refuses_mutations(servers: Servers, sqlite_url: str,
                                               seeded_sqlite: Seeded) -> None:
    server = servers.dashboard(sqlite_url, "--read-only")
    with httpx.Client(base_url=server.url) as client:
        for path in (f"/tasks/{seeded_sqlite.failed}", f"/tasks/{seeded_sqlite.pending}", "/dead-letters"):
            page = client.get(path)
            assert page.status_code == 200
            assert "<form method=\"post\"" not in page.text, path
            assert "read-only" in page.text
        token = CsrfTokens().issue()  # even a well-formed token does not help
        client.cookies.set(CSRF_COOKIE, token)
        for action, task_id in (("requeue", seeded_sqlite.failed), ("discard", seeded_sqlite.failed),
                                ("cancel", seeded_sqlite.pending)):
            response = client.post(f"/tasks/{task_id}/{action}", data={"csrf_token": token})
            assert response.status_code == 403, action
            assert "read-only" in response.text, action
    failed, pending = stored(sqlite_url, seeded_sqlite.failed), stored(sqlite_url, seeded_sqlite.pending)
    assert failed is not None
    assert failed.status is TaskStatus.FAILED
    assert pending is not None
    assert pending.status is TaskStatus.PENDING


def test_auth_user_pass_guards_every_path(servers: Servers, sqlite_url: str, seeded_sqlite: Seeded) -> None:
    server = servers.dashboard(sqlite_url, "--auth", "ops:s3cret-pass")
    for path in ("/", "/tasks", f"/tasks/{seeded_sqlite.failed}", "/api/overview", "/static/dashboard.js"):
        assert httpx.get(server.url + path).status_code == 401, path
    refused = httpx.get(server.url + "/", auth=("ops", "wrong-pass"))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(server.url + "/", auth=("someone", "s3cret-pass")).status_code == 401
    assert httpx.get(server.url + "/", auth=("ops", "s3cret-pass")).status_code == 200
    assert httpx.get(server.url + "/", headers={"authorization": "Bearer s3cret-pass"}).status_code == 401
    assert "s3cret-pass" not in server.output()


def test_auth_token_as_basic_password_or_bearer(servers: Servers, sqlite_url: str,
                                                seeded_sqlite: Seeded) -> None:
    server = servers.dashboard(sqlite_url, "--auth", "tok-0123456789")
    assert httpx.get(server.url + "/").status_code == 401
    assert httpx.get(server.url + "/", auth=("anyone", "tok-0123456789")).status_code == 200
    assert httpx.get(server.url + "/", headers={"authorization": "Bearer tok-0123456789"}).status_code == 200
    assert httpx.get(server.url + "/", headers={"authorization": "Bearer tok-01234567"}).status_code == 401
    garbage = "Basic " + base64.b64encode(b"no-colon").decode()
    assert httpx.get(server.url + "/", headers={"authorization": garbage}).status_code == 401


def test_binding_beyond_loopback_without_auth_is_refused(sqlite_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "salvador_core", "dashboard", "--url", sqlite_url, "--host", "0.0.0.0",
         "--port", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "refusing to listen on 0.0.0.0 without --auth" in lines[0]


def test_bind_and_auth_rules() -> None:
    for host in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"):
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.com"):
        with pytest.raises(ConfigurationError, match="--auth"):
            check_bind(host, None)
        check_bind(host, Auth.parse("user:pw"))
    for bad in ("short", ":pw", "user:"):
        with pytest.raises(ConfigurationError):
            Auth.parse(bad)
    assert "pw-secret" not in repr(Auth.parse("user:pw-secret"))


def test_payloads_hidden_unless_asked(servers: Servers, sqlite_url: str, seeded_sqlite: Seeded) -> None:
    hidden = servers.dashboard(sqlite_url)
    shown = servers.dashboard(sqlite_url, "--show-payloads")
    path = f"/tasks/{seeded_sqlite.failed}"
    quiet = httpx.get(hidden.url + path).text + httpx.get(hidden.url + "/api" + path).text
    assert "onerror" not in quiet
    assert "body" in quiet
    assert "hidden" in quiet
    assert "<script>body" not in quiet
    assert "&lt;script&gt;body" not in quiet
    page = httpx.get(shown.url + path).text
    assert "&lt;script&gt;body&lt;/script&gt;" in page  # the body, escaped
    assert "&lt;img src=x onerror=" in page
    assert HOSTILE_RESULT not in page


def test_requeue_without_the_workflows_says_what_is_missing(servers: Servers, sqlite_url: str,
                                                            seeded_sqlite: Seeded) -> None:
    server = servers.dashboard(sqlite_url, app=None)
    path = f"/tasks/{seeded_sqlite.failed}"
    with httpx.Client(base_url=server.url) as client:
        page = client.get(path).text
        assert "Requeue needs the steps of workflow dash-fail" in page
        assert 'name="requeue"' not in page
        token = _token_of(client, path)  # the discard form still carries one
        response = client.post(path + "/requeue", data={"csrf_token": token})
    assert response.status_code == 409
    assert "--app MODULE:ATTR" in response.text
    task = stored(sqlite_url, seeded_sqlite.failed)
    assert task is not None
    assert task.status is TaskStatus.FAILED


def test_backend_password_never_shown() -> None:
    server = shared_redis_url()
    prefix = unique("salvador-dash-")
    url = server.replace("redis://", "redis://default:hunter2-secret@", 1) + f"?prefix={prefix}"
    app = create_app(url)

    async def fetch() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
                return [await client.get(path) for path in ("/", "/tasks", "/dead-letters", "/api/overview",
                                                            "/tasks/no-such-task")]
        finally:
            await app.state.dashboard.close()

    try:
        pages = run_async(fetch)  # in a thread: a Playwright loop may be registered on this one
    finally:
        delete_prefix(server, prefix)
    assert [p.status_code for p in pages] == [200, 200, 200, 200, 404]
    assert "redis://default:***@" in pages[0].text
    for response in pages:
        assert "hunter2-secret" not in response.text


def test_responses_carry_a_strict_content_security_policy(servers: Servers, sqlite_url: str,
                                                          seeded_sqlite: Seeded) -> None:
    server = servers.dashboard(sqlite_url)
    response = httpx.get(server.url + "/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["x-frame-options"] == "DENY"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie

