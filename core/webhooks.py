"""Webhooks, the part both sides need: which URLs may be called, and the outbox rows.

The API checks a spec's `notify.url` at submit time; the worker's dispatcher (worker/webhooks.py)
resolves and checks it again before every attempt and connects to an address it checked, since
a name that resolved to a public address at submit time may resolve to a private one later
(DNS rebinding). httpx's URL parser is the judge of syntax, so a URL that passes submit can be
sent. No fastapi and no torch in here."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as LookupTimeout
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import invalid_field
from core.status import TERMINAL
from core.tables import Experiment, WebhookDelivery, as_utc, utcnow

if TYPE_CHECKING:
    from core.spec import ExperimentCreate

Resolver = Callable[..., list[tuple[Any, ...]]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOKUP_TIMEOUT_S = 2.0  # a name that takes longer to resolve is refused
# getaddrinfo has no timeout of its own: lookups run here and are waited on with one. A lookup
# that hangs keeps its thread until the resolver gives up; the caller has moved on by then.
_lookups = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook-dns")
# A host whose last label is a number (or 0x...) is an IPv4 address to a URL parser and to
# inet_aton (2130706433, 127.1, 0x7f.1, 0177.0.0.1): only the dotted-quad decimal form is taken.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the last 32 bits
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: bits 48-63 and 72-87
TEREDO = ipaddress.ip_network("2001::/32")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address carries and that a gateway may connect to: mapped
    (::ffff:a.b.c.d), translated (::ffff:0:a.b.c.d), compatible (::a.b.c.d), NAT64, 6to4
    (2002:aabb:ccdd::) and Teredo (server and client)."""
    packed = ip.packed
    out: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if packed[:8] == bytes(8) and packed[8:12] in (b"\xff\xff\x00\x00", bytes(4)):
        out.append(ipaddress.IPv4Address(packed[12:]))  # translated, or compatible
    if ip in NAT64:
        out.append(ipaddress.IPv4Address(packed[12:]))
    if ip in NAT64_LOCAL:
        out.append(ipaddress.IPv4Address(packed[6:8] + packed[9:11]))
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip in TEREDO and ip.teredo is not None:
        out.extend(ip.teredo)
    return out


def _refused_ip(ip: Address) -> bool:
    """Loopback, private, link-local, shared (100.64/10), reserved, unspecified or multicast,
    as itself or as any IPv4 address it embeds (a NAT64 or 6to4 gateway would connect to
    that one). The IPv4-compatible and -translated forms are refused outright (deprecated;
    nothing public is reached that way), and so is Teredo, a tunnel to any IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        packed = ip.packed
        if ip in TEREDO or (
            packed[:8] == bytes(8)
            and packed[8:10] in (b"\xff\xff", bytes(2))
            and ip.ipv4_mapped is None
        ):
            return True
        if any(_refused_ip(v4) for v4 in embedded_ipv4(ip)):
            return True
    return not ip.is_global or ip.is_multicast


def parse(url: str) -> tuple[httpx.URL | None, str | None]:
    """The URL as httpx will send it, or why it cannot be sent: httpx's own parser is the
    judge, so a URL that passes here cannot fail there."""
    try:
        parsed = httpx.URL(url)
    except Exception as exc:  # InvalidURL, and whatever else a malformed URL raises
        return None, f"not a valid URL: {exc}"
    if parsed.scheme not in ("http", "https"):
        return None, "only http and https URLs are allowed"
    host = parsed.host
    if not host:
        return None, "the URL has no host"
    labels = host.rstrip(".").split(".")
    if ":" not in host and _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return None, f"the host {host!r} is a number but not a dotted-quad IPv4 address"
    return parsed, None


def resolve_url(
    url: str,
    allow_private: bool,
    resolve: Resolver | None = None,
    timeout: float = LOOKUP_TIMEOUT_S,
) -> tuple[list[Address], str | None]:
    """Every address the URL's host resolves to, checked: ([addresses], None), or ([], why
    not). The one lookup a delivery makes: it connects to one of these addresses, so what was
    checked is what is called (no second lookup that could answer differently)."""
    parsed, reason = parse(url)
    if parsed is None:
        return [], reason
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded: what the resolver is asked
    try:
        addresses: list[Address] = [ipaddress.ip_address(host)]
    except ValueError:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            infos = _lookups.submit(resolve or socket.getaddrinfo, host, port).result(
                timeout=timeout
            )
            # scope ids (fe80::1%eth0) are not part of the address
            addresses = [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]
        except LookupTimeout:
            return [], f"the host {host!r} did not resolve within {timeout:g} s"
        except (OSError, UnicodeError, ValueError) as exc:
            return [], f"the host {host!r} does not resolve: {exc}"
    if not addresses:
        return [], f"the host {host!r} resolves to no address"
    bad = [str(a) for a in addresses if _refused_ip(a)]
    if bad and not allow_private:
        return [], (
            f"the host {host!r} is a loopback, private, link-local or reserved address "
            f"({', '.join(bad)}); WEBHOOK_ALLOW_PRIVATE allows them"
        )
    return addresses, None


def url_refused(
    url: str,
    allow_private: bool,
    resolve: Resolver | None = None,
    timeout: float = LOOKUP_TIMEOUT_S,
) -> str | None:
    """Why `url` may not be called, or None when it may. A name is resolved and every address
    it resolves to must be public, unless `allow_private` (then only the syntax is checked)."""
    if allow_private:
        return parse(url)[1]
    return resolve_url(url, allow_private, resolve, timeout)[1]


def check_notify(
    spec: ExperimentCreate, allow_private: bool, point: dict[str, Any] | None = None
) -> None:
    """422 naming `notify.url` when the webhook URL may not be called (a loopback, private or
    reserved address, or a name that does not resolve), unless `allow_private`; naming
    `notify.events` when `vanishing` is asked for without the temporal instrument. `point`:
    the sweep's grid point the spec came from, named in the problem."""
    if spec.notify is None:
        return
    extra = {} if point is None else {"point": point}
    if "vanishing" in spec.notify.events and "temporal" not in spec.instrument.on:
        reason = "the 'vanishing' event is read from the temporal profile: add 'temporal' to on"
        raise invalid_field(reason, "notify.events", reason, "value", **extra)
    reason = url_refused(spec.notify.url, allow_private)
    if reason is not None:
        raise invalid_field(reason, "notify.url", reason, "url", "Webhook URL refused", **extra)


def iso(dt: datetime | None) -> str | None:
    """A stored time as the API renders it (orjson writes an aware datetime in isoformat)."""
    return None if dt is None else as_utc(dt).isoformat()


def subscribed(spec: dict[str, Any] | None, event: str) -> str | None:
    """The URL to notify of `event` under this normalised spec, or None."""
    notify = (spec or {}).get("notify") or {}
    return notify.get("url") if event in (notify.get("events") or ()) else None


def delivery(row: Experiment, attempt: int, event: str, url: str, **body: Any) -> WebhookDelivery:
    payload = {
        "event": event,
        "experiment_id": row.id,
        "name": row.name,
        "attempt": attempt,
        **body,
        "links": {"self": f"/v1/experiments/{row.id}"},
    }
    now = utcnow()
    return WebhookDelivery(
        experiment_id=row.id,
        attempt=attempt,
        event=event,
        url=url,
        payload=payload,
        status="pending",
        attempts=0,
        log=[],
        next_attempt_at=now,
        created_at=now,
    )


def terminal_delivery(row: Experiment) -> WebhookDelivery | None:
    """The `finished` notification for a row that has just reached a terminal status; add it
    in the same transaction as that status, so neither is stored without the other."""
    url = subscribed(row.spec, "finished")
    if url is None or row.status not in TERMINAL:
        return None
    return delivery(
        row,
        row.attempt,
        "finished",
        url,
        status=row.status,
        finished_at=iso(row.finished_at),
        summary=row.summary,
        diagnosis=row.diagnosis,
        error=row.error,
    )


# Loop events that a spec's notify.events may subscribe to: event kind -> webhook event.
NOTIFIED_EVENTS = {"nonfinite": "nan", "exploding": "exploding", "vanishing": "vanishing"}


def _json_safe(value: Any) -> Any:
    from core.lifecycle import json_safe  # lifecycle imports this module

    return json_safe(value)


def add_running_deliveries(
    session: Session,
    experiment_id: str,
    attempt: int,
    events: list[dict[str, Any]],
    spec: dict[str, Any],
    notified: set[str] | None = None,
) -> set[str]:
    """The running webhooks (`nan`, `exploding`, `vanishing`) a flushed batch's `events`
    trigger, for a worker's run and an external one alike. One delivery per subscribed event
    per attempt: `nan` with skip_step may fire every step,
    and a receiver wants to hear it once. Returns the events this attempt now has a delivery
    for (among this batch's). Only the attempt's own writer gets here (write_batch's guarded
    update comes first, and one attempt has one writer), so two writers cannot race on a
    delivery; the unique index on (experiment_id, attempt, event) would refuse a second."""
    firsts: dict[str, dict[str, Any]] = {}
    for ev in events:
        event = NOTIFIED_EVENTS.get(ev["kind"])
        if (
            event is not None
            and event not in firsts
            and event not in (notified or ())
            and subscribed(spec, event)
        ):
            firsts[event] = ev
    if not firsts:
        return set()
    sent = set(
        session.scalars(
            select(WebhookDelivery.event).where(
                WebhookDelivery.experiment_id == experiment_id,
                WebhookDelivery.attempt == attempt,
                WebhookDelivery.event.in_(list(firsts)),
            )
        )
    )
    if set(firsts) <= sent:
        return sent
    row = session.get(Experiment, experiment_id)
    assert row is not None
    for event, ev in firsts.items():
        if event not in sent:
            url = subscribed(spec, event)
            assert url is not None
            session.add(
                delivery(
                    row,
                    attempt,
                    event,
                    url,
                    step=ev["step"],
                    detail=_json_safe(ev["detail"]),
                    occurred_at=utcnow().isoformat(),
                )
            )
    return set(firsts)
