"""Prometheus metrics, request ids and JSON logs.

- `GET /metrics` (no key, like /healthz, unless METRICS_KEY is set; totals over every owner,
  never an owner's name): `gradlab_http_requests_total{method,route,status}`
  and `gradlab_http_request_duration_seconds{method,route}` from a middleware (`route` is the
  route's template, so ids never become labels), and, read from the database at scrape time,
  `gradlab_experiments{status}`, `gradlab_queue_depth` (experiments queued), and
  `gradlab_worker_steps_per_second{worker}` (each running experiment's progress over its
  time since it started). `gradlab_database_up` is 0 when that read failed.
- Every response carries `X-Request-ID`: the request's own when it sent a sane one (at most
  128 of `A-Za-z0-9._:-`), else a new one. It is on every log line written while the request
  runs, and the middleware writes one line per request.
- Logs of the `gradlab` loggers are JSON lines on stderr (`LOG_FORMAT=text` for plain)."""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response
from core.db import get_read_engine
from core.errors import Problem
from core.logs import request_id
from core.settings import get_settings
from core.status import STATUSES
from core.tables import Experiment

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = logging.getLogger("gradlab.http")

disable_created_metrics()  # no *_created series: one sample per counter
REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter(
    "gradlab_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "gradlab_http_request_duration_seconds",
    "HTTP request latency, by method and route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)


class DatabaseCollector(Collector):
    """Experiments by status, queue depth and training speed, read at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("gradlab_database_up", "1 when the scrape could read the database")
        by_status = GaugeMetricFamily(
            "gradlab_experiments", "experiments by status", labels=["status"]
        )
        depth = GaugeMetricFamily("gradlab_queue_depth", "experiments queued, waiting for a worker")
        speed = GaugeMetricFamily(
            "gradlab_worker_steps_per_second",
            "training steps per second of the experiment each worker is running",
            labels=["worker"],
        )
        try:
            table = Experiment.__table__
            with get_read_engine().connect() as conn:
                rows = conn.execute(
                    select(table.c.status, func.count()).group_by(table.c.status)
                ).all()
                counts = {status: n for status, n in rows}
                running = conn.execute(
                    select(
                        table.c.worker,
                        table.c.progress_step,
                        table.c.started_at,
                        table.c.heartbeat_at,
                    ).where(table.c.status == "running")
                ).all()
        except Exception:
            log.warning("metrics: database unreadable", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for status in (*STATUSES, *sorted(set(counts) - set(STATUSES))):
            by_status.add_metric([status], counts.get(status, 0))
        depth.add_metric([], counts.get("queued", 0))
        for worker, step, started, beat in running:
            if worker and started and beat:
                seconds = (_utc(beat) - _utc(started)).total_seconds()
                if seconds > 0:
                    speed.add_metric([worker], step / seconds)
        yield from (up, by_status, depth, speed)


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


REGISTRY.register(DatabaseCollector())

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
)
def metrics(request: Request) -> Response:
    """Prometheus text exposition: HTTP requests and latency per route, experiments by status,
    queue depth, training steps per second per worker. Counts over all owners, no owner's
    names or ids; open like /healthz unless METRICS_KEY is set, then `Bearer <METRICS_KEY>`."""
    wanted = get_settings().metrics_key
    if wanted is not None:
        _, _, given = request.headers.get("authorization", "").partition(" ")
        if not hmac.compare_digest(given.strip().encode(), wanted.encode()):
            raise Problem(
                401,
                "Unauthorized",
                "send Authorization: Bearer <METRICS_KEY>",
                "unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="gradlab-metrics"'},
            )
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class ObservabilityMiddleware:
    """Pure ASGI (no response buffering): request id in and out, the request counted and timed
    under its route template, one log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), ""
        )
        rid = incoming if _SANE_ID.match(incoming) else uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500
        started = False
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                # Answered here rather than by the server error middleware outside this one,
                # so a 500 carries the request id too, the one on its log line.
                if started:
                    raise
                log.exception("unhandled error")
                await problem_response(
                    500, "Internal error", "an error of ours; it has been logged", "internal"
                )(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(elapsed)
            log.info(
                "request",
                extra={
                    "method": method,
                    "path": scope["path"],  # never the query string: ?key= stays out of logs
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id.reset(token)
