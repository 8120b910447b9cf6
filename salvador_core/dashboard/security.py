"""The dashboard's gatekeeping: who may look (auth), where it may listen (bind), and which
POSTs are really the operator's (CSRF).

Auth is HTTP Basic, because a browser asks for it by itself and no login page or session
store is needed: `--auth user:pass` wants exactly that pair, `--auth TOKEN` wants the token
as the password under any user name (scripts may also send `Authorization: Bearer TOKEN`).
Credentials are compared in constant time and never echoed anywhere.

CSRF is a signed double-submit token: a random nonce signed with a per-process secret,
set as a SameSite=Strict cookie and embedded in every form. A POST is accepted only when
the form's token equals the cookie's and the signature checks out, so another site can
neither read the token (same-origin policy) nor forge one (it lacks the secret), and a
restarted dashboard invalidates every token it handed out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from salvador_core.errors import ConfigurationError

#: The cookie holding the CSRF token, and the form field / header that must repeat it.
CSRF_COOKIE = "salvador_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Auth:
    """Credentials the dashboard demands. `user` None: a token, accepted as the Basic
    password under any user name or as a Bearer token."""

    user: str | None
    secret: str = ""

    @classmethod
    def parse(cls, spec: str) -> Auth:
        """`TOKEN` or `user:pass`, as given to `--auth`."""
        user, sep, password = spec.partition(":")
        if sep:
            if not user or not password:
                raise ConfigurationError(
                    "--auth user:pass needs both a user name and a password (or pass a single TOKEN)"
                )
            return cls(user, password)
        if len(spec) < 8:
            raise ConfigurationError("--auth TOKEN must be at least 8 characters; use a random token")
        return cls(None, spec)

    def allows(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header carries these credentials."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer":
            return self.user is None and _same(value, self.secret)
        if scheme != "basic":
            return False
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        user_ok = True if self.user is None else _same(user, self.user)
        return _same(password, self.secret) and user_ok

    def __repr__(self) -> str:
        return f"Auth(user={self.user!r}, secret='***')"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the dashboard on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, auth: Auth | None) -> None:
    """Refuse to serve on a non-loopback address without credentials: the dashboard can
    requeue, discard and cancel tasks, and anyone on the network could."""
    if auth is None and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to listen on {host} without --auth: anyone who can reach it could cancel "
            "and discard tasks; pass --auth TOKEN or --auth user:pass, or keep the default 127.0.0.1"
        )


class CsrfTokens:
    """Issues and checks signed double-submit tokens under one per-process secret."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def issue(self) -> str:
        """A fresh token: `nonce.signature`."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        """Whether `token` was issued by this process."""
        if not token:
            return False
        nonce, sep, signature = token.partition(".")
        return bool(sep and nonce) and hmac.compare_digest(signature, self._sign(nonce))

    def accepts(self, cookie: str | None, submitted: str | None) -> bool:
        """Whether a POST is the operator's: the submitted token repeats the cookie's and is ours."""
        if not cookie or not submitted:
            return False
        return hmac.compare_digest(cookie, submitted) and self.valid(cookie)

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode("ascii", "replace"), hashlib.sha256).hexdigest()
