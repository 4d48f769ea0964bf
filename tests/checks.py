"""Assertions and readers shared by the tests."""

import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

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
