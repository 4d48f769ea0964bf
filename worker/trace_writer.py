"""The trace writer: flushed batches are stored from a background thread, so training never
waits on the database, and a database restart is ridden out with retries."""

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from core.db import get_sessionmaker
from core.logs import RequestIdThread
from worker import store
from worker.instruments.base import Batch

log = logging.getLogger("gradlab.worker")
T = TypeVar("T")


def with_retries(fn: Callable[[], T], what: str, budget_s: float = 120.0) -> T:
    """Ride out a database restart: retry with backoff for up to `budget_s`, then raise."""
    delay, deadline = 0.25, time.monotonic() + budget_s
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s failed; retrying in %.1f s", what, delay, exc_info=True)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class Writer(RequestIdThread):
    """Writes flushed batches in the background so training never waits on the database."""

    def __init__(
        self, experiment_id: str, attempt: int, spec: dict[str, Any] | None = None
    ) -> None:
        super().__init__("trace-writer")
        self.experiment_id, self.attempt, self.spec = experiment_id, attempt, spec
        self.notified: set[str] = set()  # webhook events this attempt has a delivery for
        self.q: queue.Queue[tuple[Batch, int] | None] = queue.Queue()
        self.lost = threading.Event()

    def work(self) -> None:
        while (item := self.q.get()) is not None:
            batch, step = item

            def write(batch: Batch = batch, step: int = step) -> bool:
                with get_sessionmaker()() as s:
                    return store.write_batch(
                        s, self.experiment_id, self.attempt, batch, step, self.spec, self.notified
                    )

            try:
                if not with_retries(write, f"storing a batch of {self.experiment_id}"):
                    self.lost.set()
            except Exception:
                log.exception("gave up storing a batch of %s", self.experiment_id)

    def put(self, batch: Batch, step: int) -> None:
        self.q.put((batch, step))

    def close(self) -> None:
        self.q.put(None)
        self.join()
