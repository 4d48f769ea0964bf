"""Assertions and readers shared by the tests."""

import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")


def assert_problem(resp, status: int, field: str | None = None) -> dict:
    """An RFC 9457 problem with this status (and, given, an error naming `field`)."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


def tensorboard_scalars(run_dir: Path) -> dict[str, list]:
    """Every scalar of a TensorBoard run folder, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    acc = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})  # 0: keep every point
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def gaps_s(log: list[dict]) -> list[float]:
    """Seconds between consecutive webhook attempts of a delivery's log."""
    at = [datetime.fromisoformat(a["at"]) for a in log]
    return [(b - a).total_seconds() for a, b in zip(at, at[1:], strict=False)]


def at_once(fn: Callable[[], T], n: int, timeout_s: float = 120) -> list[T]:
    """fn() called by n threads released together (a barrier); their results, in the order
    they finished."""
    barrier = threading.Barrier(n)
    results: list[T] = []

    def one() -> None:
        barrier.wait()
        results.append(fn())

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    return results


@dataclass
class RoundTrips:
    n: int = 0  # the waits for PostgreSQL's answer: one ReadyForQuery ends each
    log: str = ""  # libpq's trace of the messages, both ways


@contextmanager
def pg_round_trips(engine: Any) -> Iterator[RoundTrips]:
    """The round trips to PostgreSQL of every connection `engine`'s pool hands out in the
    block, returning it to the pool included, read from libpq's own trace (PQtrace) once the
    block ends. Opening a new connection is the pool's, not counted."""
    from psycopg import pq
    from sqlalchemy import event

    trips = RoundTrips()
    traced: list[tuple[Any, IO[str]]] = []
    with ExitStack() as files:

        def trace(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
            out = files.enter_context(tempfile.TemporaryFile("w+"))
            dbapi_conn.pgconn.trace(out.fileno())
            dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            traced.append((dbapi_conn.pgconn, out))

        event.listen(engine, "checkout", trace)
        try:
            yield trips
        finally:
            event.remove(engine, "checkout", trace)
            for pgconn, out in traced:
                pgconn.untrace()  # flushes the trace
                out.seek(0)
                trips.log += out.read()
            trips.n = trips.log.count("\tReadyForQuery\t")
