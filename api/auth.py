"""Who is asking: the bearer key's owner (keys themselves live in core/keys.py), cached, and
per-key rate limits."""

import threading
import time
from collections import OrderedDict
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from api.sessions import CSRF_HEADER, SESSION_COOKIE, csrf_ok, read_session
from core.db import get_sessionmaker
from core.errors import Problem
from core.keys import hash_key, owner_for_key
from core.settings import get_settings

MAX_ENTRIES = 10_000  # keys (or client addresses) remembered at once; the oldest go first


class RateLimiter:
    """A token bucket per key, in this process (each API process limits on its own). At most
    MAX_ENTRIES buckets: the least recently used is dropped (it refills to a full bucket)."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, rate: float, burst: float) -> float:
        """0 when allowed, else the seconds until a token is there."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            allowed = tokens >= 1
            self._buckets[key] = (tokens - 1 if allowed else tokens, now)
            if len(self._buckets) > MAX_ENTRIES:
                self._buckets.popitem(last=False)
            return 0.0 if allowed else (1 - tokens) / rate

    def peek(self, key: str, rate: float, burst: float) -> float:
        """What `take` would answer, without taking a token."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / rate

    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()


limiter = RateLimiter()
# Lookups of unknown keys, per client address: each is a database read, so once an address
# has spent its budget on made-up keys, its next uncached key is refused before the database.
# A valid key's first lookup costs nothing here (a client's keys are never refused for it).
miss_limiter = RateLimiter()
UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="gradlab"'}


class KeyCache:
    """key hash -> owner (None: unknown or revoked, cached too) for `auth_cache_s`, so a
    request costs no key lookup; a revocation takes effect within that time. At most
    MAX_ENTRIES entries, the least recently used dropped first: a flood of made-up keys cannot
    push the real ones out all at once."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, digest: str) -> tuple[bool, str | None]:
        """(True, owner) on a live entry, else (False, None): no I/O."""
        with self._lock:
            hit = self._entries.get(digest)
            if hit is None or hit[1] <= time.monotonic():
                return False, None
            self._entries.move_to_end(digest)
            return True, hit[0]

    def lookup(self, digest: str, ttl: float) -> str | None:
        """The database's answer, cached. Blocking: call it from a thread."""
        with get_sessionmaker()() as session:
            owner = owner_for_key(session, digest)
        with self._lock:
            self._entries[digest] = (owner, time.monotonic() + ttl)
            self._entries.move_to_end(digest)
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)
        return owner

    def owner(self, digest: str, ttl: float) -> str | None:
        hit, owner = self.cached(digest)
        return owner if hit else self.lookup(digest, ttl)

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
    401 without a valid one, 429 over the rate (or, for a key the cache does not hold, when
    this client address sent over AUTH_MISS_RATE_PER_S unknown keys). Async: on a cache hit it
    does no I/O and pays no threadpool hop; a miss is looked up in the threadpool, never on the
    event loop."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if not header.strip() and SESSION_COOKIE in request.cookies:
        digest = session_digest(request)
    elif scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("send Authorization: Bearer <API key>, or sign in at /ui/signin")
    else:
        digest = hash_key(key.strip())
    s = get_settings()
    hit, owner = key_cache.cached(digest)
    if not hit:
        address = request.client.host if request.client else "unknown"
        wait = miss_limiter.peek(address, s.auth_miss_rate_per_s, s.auth_miss_burst)
        if wait > 0:
            raise Problem(
                429,
                "Too many unknown keys",
                f"over {s.auth_miss_rate_per_s:g} unknown keys/s from this address",
                "rate-limited",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        owner = await run_in_threadpool(key_cache.lookup, digest, s.auth_cache_s)
        if owner is None:
            miss_limiter.take(address, s.auth_miss_rate_per_s, s.auth_miss_burst)
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
