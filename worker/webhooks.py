"""The webhook dispatcher: sends the outbox rows (webhook_deliveries) that the worker, the
reconciler and the API's cancel write beside what they report, signs each body, retries with
exponential backoff and records every attempt on the row.

It runs as a daemon thread in each worker process, so training never waits on a receiver.
Several workers share the outbox: a row is claimed by a conditional update (PostgreSQL also
skips rows another worker has locked), which counts the attempt and leases the row until the
attempt's outcome is written; a worker that dies mid-attempt leaves a lease that runs out and
the next attempt goes out from another.

Signature: X-Gradlab-Signature is `sha256=` + hex HMAC-SHA256 of `{timestamp}.{body}` under
the webhook secret, with the timestamp (Unix seconds) in X-Gradlab-Timestamp, so a receiver
can refuse a replayed body. See the README, "Webhooks"."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.db import get_sessionmaker
from core.keyfile import SecretError as SecretError  # what signing_secret raises
from core.keyfile import stored_secret
from core.loops import LoopThread
from core.settings import Settings, get_settings
from core.tables import Experiment, WebhookDelivery, utcnow
from core.webhooks import Resolver, resolve_url

log = logging.getLogger("gradlab.webhooks")

SIGNATURE = "X-Gradlab-Signature"
TIMESTAMP = "X-Gradlab-Timestamp"
EVENT = "X-Gradlab-Event"
DELIVERY = "X-Gradlab-Delivery"
USER_AGENT = "gradlab-webhooks/1"
MAX_LOG = 50  # attempts kept on a row; WEBHOOK_MAX_ATTEMPTS is at most 30
BATCH = 20  # rows claim_due claims when not told how many
MIN_SECRET = 16  # bytes


def signing_secret(settings: Settings) -> bytes:
    """WEBHOOK_SECRET, or the installation's own secret in WEBHOOK_SECRET_FILE (made on first
    use, mode 0600): the embedded default works with nothing set, and a receiver reads it there.
    Several workers on one host may make it at once: each writes a whole temporary file and
    links it into place, one link wins and every worker uses the winner's secret. A file that
    holds fewer than MIN_SECRET bytes (emptied, truncated) is refused: an empty HMAC key lets
    anyone forge the signature."""
    if settings.webhook_secret:
        return settings.webhook_secret.encode()
    return stored_secret(settings.webhook_secret_file, MIN_SECRET).encode()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def backoff_s(settings: Settings, attempts: int) -> float:
    """Delay after the `attempts`-th failed try: base, 2 base, 4 base, ..., capped."""
    return min(settings.webhook_backoff_s * 2 ** (attempts - 1), settings.webhook_backoff_max_s)


@dataclass
class Claimed:
    id: str
    attempts: int  # this attempt's number, 1-based
    event: str
    url: str
    payload: dict[str, Any]


def fail_spent(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Rows whose last allowed attempt was claimed and whose lease ran out with no outcome
    written (their dispatcher died) become failed, rather than pending forever."""
    with sessions() as s:
        s.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.attempts >= settings.webhook_max_attempts,
                WebhookDelivery.next_attempt_at <= utcnow(),
            )
            .values(
                status="failed",
                last_error="no outcome recorded for the last attempt (its dispatcher stopped)",
            )
        )
        s.commit()


def claim_due(
    sessions: sessionmaker[Session],
    settings: Settings,
    limit: int | None = None,
    per_owner: int | None = None,
) -> list[Claimed]:
    """Due pending rows with attempts left, each claimed by one dispatcher: its attempt
    counted, its lease set. With `per_owner`: at most that many of one owner's, so one
    owner's backlog leaves room for the others' in the same round, and one of an
    experiment's, so its deliveries go out in order."""
    now = utcnow()
    lease = now + timedelta(seconds=2 * settings.webhook_timeout_s + 30)
    t = WebhookDelivery
    out: list[Claimed] = []
    taken: Counter[str] = Counter()
    experiments: set[str] = set()
    most = limit or BATCH
    with sessions() as s:
        due = s.execute(
            select(t.id, t.attempts, t.event, t.url, t.payload, t.experiment_id, Experiment.owner)
            .join(Experiment, Experiment.id == t.experiment_id)
            .where(
                t.status == "pending",
                t.next_attempt_at <= now,
                t.attempts < settings.webhook_max_attempts,
            )
            .order_by(t.next_attempt_at)
            .limit(most * 4 if per_owner else most)
            .with_for_update(skip_locked=True, of=t)
        ).all()
        for d in due:
            if len(out) >= most:
                break
            if per_owner is not None and (
                taken[d.owner] >= per_owner or d.experiment_id in experiments
            ):
                continue  # and one of an experiment's at a time: they arrive in order
            # The guard makes the claim safe without row locks too (SQLite): of two
            # dispatchers that read the same row, one update matches.
            res = s.execute(
                update(t)
                .where(t.id == d.id, t.status == "pending", t.attempts == d.attempts)
                .values(attempts=d.attempts + 1, next_attempt_at=lease)
            )
            if res.rowcount == 1:
                taken[d.owner] += 1
                experiments.add(d.experiment_id)
                out.append(Claimed(d.id, d.attempts + 1, d.event, d.url, d.payload))
        s.commit()
    return out


def redacted(url: str) -> str:
    """scheme://host/path for the logs: the query string may carry a receiver's token."""
    try:
        u = httpx.URL(url)
        return f"{u.scheme}://{u.netloc.decode('ascii')}{u.path}"
    except Exception:
        return "<invalid URL>"


class Watchdog:
    """Bounds a whole attempt: httpx's timeouts are per read, so a receiver that trickles its
    status line a byte at a time would hold the thread forever. When the deadline passes, the
    connection's socket is shut down, which wakes the blocked read. httpcore hands the socket
    over through its `trace` extension as soon as it is connected."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._streams: list[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def trace(self, name: str, info: dict[str, Any]) -> None:
        stream = info.get("return_value")
        if stream is None or not name.endswith((".connect_tcp.complete", ".start_tls.complete")):
            return
        with self._lock:
            self._streams.append(stream)
            fired = self.fired
        if fired:
            self._shut(stream)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            streams = list(self._streams)
        for stream in streams:
            self._shut(stream)

    @staticmethod
    def _shut(stream: Any) -> None:
        sock = stream.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # a plain socket TLS has taken over: detached
                sock.shutdown(socket.SHUT_RDWR)


def send(
    c: Claimed, settings: Settings, secret: bytes, resolve: Resolver | None = None
) -> tuple[int | None, str | None]:
    """One POST: (status code, None) when the receiver answered, (None, error) otherwise.
    Never raises: whatever goes wrong is the attempt's error.

    The host is resolved once, every address it resolves to is checked, and the connection
    goes to a checked address: the URL's host is replaced by the IP, the Host header carries
    the name, and for https the name is the TLS server name (SNI and certificate check), so a
    second lookup that answers differently (DNS rebinding) is never made. Only the status line
    is read, never the body, and WEBHOOK_TIMEOUT_S bounds the whole exchange."""
    try:
        # Checked again at each attempt: a name may resolve elsewhere than it did at submit time.
        addresses, reason = resolve_url(c.url, settings.webhook_allow_private, resolve)
        if reason is not None:
            return None, f"refused: {reason}"
        url = httpx.URL(c.url)
        target = url.copy_with(host=str(addresses[0]))
        extensions: dict[str, Any] = {}
        if url.scheme == "https":
            extensions["sni_hostname"] = url.raw_host.decode("ascii")
        body = orjson.dumps(c.payload)
        timestamp = str(int(time.time()))
        headers = {
            "Host": url.netloc.decode("ascii"),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT: c.event,
            DELIVERY: c.id,
            TIMESTAMP: timestamp,
            SIGNATURE: sign(secret, timestamp, body),
        }
        watchdog = Watchdog(settings.webhook_timeout_s)
        extensions["trace"] = watchdog.trace
        # A client per attempt: its pool is keyed by the IP, so a kept-alive connection could
        # otherwise be reused for another name on the same address. No proxies from the
        # environment (they would do their own lookup), no redirects (a 3xx to an internal
        # address would get round the check).
        with (
            httpx.Client(
                timeout=settings.webhook_timeout_s, trust_env=False, follow_redirects=False
            ) as http,
            watchdog,
        ):
            try:
                with http.stream(
                    "POST", target, content=body, headers=headers, extensions=extensions
                ) as resp:
                    return resp.status_code, None
            except Exception:
                if watchdog.fired:
                    return None, f"timed out: no answer within {settings.webhook_timeout_s:g} s"
                raise
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]


def record(
    sessions: sessionmaker[Session],
    settings: Settings,
    c: Claimed,
    code: int | None,
    error: str | None,
    duration_s: float,
) -> str:
    """Store one attempt's outcome; returns the row's status after it."""
    now = utcnow()
    ok = code is not None and 200 <= code < 300
    if code is not None and not ok:
        error = f"HTTP {code}"
    entry = {
        "attempt": c.attempts,
        "at": now.isoformat(),
        "status_code": code,
        "error": error,
        "duration_ms": round(duration_s * 1000, 1),
    }
    values: dict[str, Any] = {"last_status_code": code, "last_error": error}
    if ok:
        values.update(status="delivered", delivered_at=now)
    elif c.attempts >= settings.webhook_max_attempts:
        values.update(status="failed")
    else:
        values.update(next_attempt_at=now + timedelta(seconds=backoff_s(settings, c.attempts)))
    with sessions() as s:
        logged = s.scalar(select(WebhookDelivery.log).where(WebhookDelivery.id == c.id)) or []
        values["log"] = [*logged, entry][-MAX_LOG:]
        # Only while the claim is still ours: past its lease another dispatcher may have it.
        res = s.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == c.id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.attempts == c.attempts,
            )
            .values(**values)
        )
        s.commit()
    if res.rowcount != 1:
        log.warning("delivery %s attempt %d was taken over; outcome dropped", c.id, c.attempts)
    return values.get("status", "pending")


def dispatch_due(
    sessions: sessionmaker[Session] | None = None,
    settings: Settings | None = None,
    resolve: Resolver | None = None,
) -> int:
    """One round: up to WEBHOOK_CONCURRENCY due deliveries, at most WEBHOOK_PER_OWNER of one
    owner's, sent at once (each claimed just before the round's sends, its outcome recorded as
    it comes); the round ends when its slowest send does, at most WEBHOOK_TIMEOUT_S. So a
    receiver that never answers delays another owner's delivery by one timeout at most.
    Returns the attempts made."""
    sessions = sessions or get_sessionmaker()
    settings = settings or get_settings()
    # Before claiming: with no usable secret nothing is claimed, so no attempt is used up.
    secret = signing_secret(settings)
    fail_spent(sessions, settings)
    claimed = claim_due(
        sessions, settings, limit=settings.webhook_concurrency, per_owner=settings.webhook_per_owner
    )
    if not claimed:
        return 0
    with ThreadPoolExecutor(len(claimed), thread_name_prefix="webhook-send") as pool:
        list(pool.map(lambda c: attempt(sessions, settings, secret, c, resolve), claimed))
    return len(claimed)


def attempt(
    sessions: sessionmaker[Session],
    settings: Settings,
    secret: bytes,
    c: Claimed,
    resolve: Resolver | None,
) -> None:
    """Send one claimed delivery and record the outcome. One row's trouble is not the next
    row's: a failure to record leaves its lease to run out, and it goes again."""
    try:
        t0 = time.perf_counter()
        code, error = send(c, settings, secret, resolve)
        status = record(sessions, settings, c, code, error, time.perf_counter() - t0)
    except Exception:
        log.warning("webhook %s attempt %d not recorded", c.id, c.attempts, exc_info=True)
        return
    log.info("webhook %s %s attempt %d: %s", c.event, c.id, c.attempts, error or code)
    if status == "failed":
        log.warning("webhook %s to %s failed after %d attempts", c.id, redacted(c.url), c.attempts)


class Dispatcher(LoopThread):
    """Rounds of dispatch_due until stopped; a round that sent something is followed at once."""

    def __init__(self, poll_s: float | None = None) -> None:
        super().__init__("webhooks", lambda: poll_s or get_settings().webhook_poll_s, log)

    def round(self) -> bool:
        return dispatch_due() > 0


def start_dispatcher_thread() -> Dispatcher:
    thread = Dispatcher()
    thread.start()
    return thread
