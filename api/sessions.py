"""Browser sessions for the web UI: a key is typed into the sign-in page once, and the browser
gets a cookie instead of keeping the key anywhere a URL or a script could leak it.

- `gradlab_session`: HttpOnly, SameSite=Strict, Path=/, Secure over https. Its value is
  `<payload>.<signature>`: the payload holds the SHA-256 of the key signed in with (never the
  key), the expiry, and a CSRF token; the signature is an HMAC-SHA256 of it under the session
  secret (SESSION_SECRET, else data/session_secret). Every request re-checks the key behind it,
  so revoking the key ends its sessions (within AUTH_CACHE_S).
- `gradlab_csrf`: the same CSRF token, readable by the UI's script, which sends it back as
  `X-CSRF-Token` on every write (double submit, bound to the signed session). A write without
  it, or from another Origin, is a 403.

Sign-out clears both. The bearer header of the /v1 API is unchanged and takes precedence."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache

from starlette.requests import Request
from starlette.responses import Response

from core.keyfile import stored_secret
from core.settings import get_settings

SESSION_COOKIE = "gradlab_session"
CSRF_COOKIE = "gradlab_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class BrowserSession:
    key_digest: str
    expires: int
    csrf: str


@lru_cache
def _secret_for(configured: str | None, path: str) -> bytes:
    from pathlib import Path

    return (configured or stored_secret(Path(path))).encode()


def secret() -> bytes:
    s = get_settings()
    return _secret_for(s.session_secret, str(s.session_secret_file))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(payload: str) -> str:
    return _b64(hmac.new(secret(), payload.encode(), hashlib.sha256).digest())


def new_session(key_digest: str, now: float | None = None) -> tuple[str, BrowserSession]:
    """The cookie value for a session of the key with this digest, and the session."""
    expires = int((now or time.time()) + get_settings().session_ttl_s)
    session = BrowserSession(key_digest, expires, secrets.token_urlsafe(24))
    payload = _b64(f"{key_digest}|{expires}|{session.csrf}".encode())
    return f"{payload}.{_sign(payload)}", session


def read_session(value: str | None, now: float | None = None) -> BrowserSession | None:
    """The session a cookie value holds: None when it is missing, malformed, forged or expired."""
    if not value or len(value) > 1000 or value.count(".") != 1:
        return None
    payload, signature = value.split(".")
    if not hmac.compare_digest(_sign(payload), signature):
        return None
    try:
        digest, expires, csrf = _unb64(payload).decode().split("|")
        session = BrowserSession(digest, int(expires), csrf)
    except (ValueError, UnicodeDecodeError):
        return None
    return session if session.expires > (now or time.time()) else None


def same_origin(request: Request) -> bool:
    """The Origin header (sent by browsers on every write), when there, names this server."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def csrf_ok(request: Request, session: BrowserSession) -> bool:
    """A write made with the session cookie carries its CSRF token and comes from this origin."""
    if request.method in SAFE_METHODS:
        return True
    token = request.headers.get(CSRF_HEADER, "")
    return same_origin(request) and hmac.compare_digest(token.encode(), session.csrf.encode())


def _secure(request: Request) -> bool:
    configured = get_settings().session_cookie_secure
    if configured is not None:
        return configured
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded == "https"


def set_session_cookies(
    response: Response, request: Request, value: str, session: BrowserSession
) -> None:
    max_age = int(get_settings().session_ttl_s)
    secure = _secure(request)
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    response.set_cookie(
        CSRF_COOKIE,
        session.csrf,
        max_age=max_age,
        path="/",
        httponly=False,  # the UI's script reads it to send it back in X-CSRF-Token
        samesite="strict",
        secure=secure,
    )


def clear_session_cookies(response: Response, request: Request) -> None:
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(
            name,
            path="/",
            httponly=name == SESSION_COOKIE,
            samesite="strict",
            secure=_secure(request),
        )
