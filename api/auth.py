"""Who is asking: the bearer key's owner (keys themselves live in core/keys.py), cached, and
per-key rate limits."""

import threading
import time
from typing import Annotated

from fastapi import Depends, Request

from api.sessions import CSRF_HEADER, SESSION_COOKIE, csrf_ok, read_session
from core.db import get_sessionmaker
from core.errors import Problem
from core.keys import hash_key, owner_for_key
from core.settings import get_settings


class RateLimiter:
    """A token bucket per key, in this process (each API process limits on its own)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, rate: float, burst: float) -> float:
        """0 when allowed, else the seconds until a token is there."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / rate


limiter = RateLimiter()
UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="gradlab"'}


class KeyCache:
    """key hash -> owner (None: unknown or revoked) for `auth_cache_s`, so a request costs no
    key lookup; a revocation takes effect within that time."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str | None, float]] = {}

    def owner(self, digest: str, ttl: float) -> str | None:
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        with get_sessionmaker()() as session:
            owner = owner_for_key(session, digest)
        if len(self._entries) > 10_000:  # a flood of made-up keys must not grow it forever
            self._entries.clear()
        self._entries[digest] = (owner, now + ttl)
        return owner

    def clear(self) -> None:
        self._entries.clear()


key_cache = KeyCache()


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, "unauthorized", headers=UNAUTHORIZED)


def session_digest(request: Request) -> str:
    """The key digest behind the request's browser session (api/sessions.py); 401 without a
    valid session, 403 for a write that fails the CSRF check."""
    session = read_session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise _unauthorized("the session has expired or is not valid: sign in again at /ui/signin")
    if not csrf_ok(request, session):
        raise Problem(
            403,
            "Forbidden",
            f"a write with the session cookie needs its {CSRF_HEADER} header, from this origin",
            "csrf",
        )
    return session.key_digest


async def current_owner(request: Request) -> str:
    """The owner of the request's key (the bearer header, else the browser session's cookie);
    401 without a valid one, 429 over the rate. Async: on a cache hit it does no I/O and pays
    no threadpool hop."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if not header.strip() and SESSION_COOKIE in request.cookies:
        digest = session_digest(request)
    elif scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("send Authorization: Bearer <API key>, or sign in at /ui/signin")
    else:
        digest = hash_key(key.strip())
    s = get_settings()
    owner = key_cache.owner(digest, s.auth_cache_s)
    if owner is None:
        raise _unauthorized("unknown or revoked API key")
    wait = limiter.take(digest, s.rate_limit_per_s, s.rate_limit_burst)
    if wait > 0:
        raise Problem(
            429,
            "Too many requests",
            f"over {s.rate_limit_per_s:g} requests/s for this key",
            "rate-limited",
            headers={"Retry-After": str(int(wait) + 1)},
        )
    return owner


Owner = Annotated[str, Depends(current_owner)]
