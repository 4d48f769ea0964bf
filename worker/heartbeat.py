"""A run's heartbeat: a loop beside training that beats the row, looks for a cancel, and ends
the process when a step runs past the hard time limit."""

import contextlib
import logging
import math
import os
import threading
import time

from core import lifecycle
from core.db import get_sessionmaker
from core.loops import LoopThread

log = logging.getLogger("gradlab.worker")


class Heartbeat(LoopThread):
    """Beats while the run goes, independent of how long a training step takes; learns of a
    cancel request, or that the reconciler has given the attempt to another worker."""

    def __init__(
        self,
        experiment_id: str,
        attempt: int,
        interval: float,
        cancel_poll: float,
        hard_deadline: float = math.inf,
    ) -> None:
        # A cancel is looked for more often than the row is written: a read is cheap.
        super().__init__("heartbeat", min(cancel_poll, interval), log)
        self.hard_deadline = hard_deadline  # time.monotonic() past which the process must go
        self.experiment_id, self.attempt, self.beat_every = experiment_id, attempt, interval
        self.stop_training = threading.Event()
        self.reason: str | None = None
        self._last_beat = time.monotonic()

    def round(self) -> bool:
        """A database that is restarting makes the round raise: training goes on, and the
        next round beats again."""
        if time.monotonic() > self.hard_deadline:
            self.hard_limit()
        with get_sessionmaker()() as s:
            if time.monotonic() - self._last_beat >= self.beat_every:
                ours, cancel = lifecycle.heartbeat(s, self.experiment_id, self.attempt)
                self._last_beat = time.monotonic()
            else:
                ours, cancel = True, lifecycle.cancel_requested(s, self.experiment_id)
        if not ours or cancel:
            self.reason = "cancelled" if cancel else "lost"
            self.stop_training.set()
        return False

    def hard_limit(self) -> None:
        """A step ran past the hard limit: no Python-level way to stop it, so record the
        verdict and end the process; acks_late plus the failed row keep the task from re-running."""
        log.error("experiment %s passed its hard time limit; exiting", self.experiment_id)
        with contextlib.suppress(Exception), get_sessionmaker()() as s:
            lifecycle.finish(
                s,
                self.experiment_id,
                self.attempt,
                "failed",
                error={"type": "time_limit", "message": "hard time limit: a step never ended"},
            )
        os._exit(70)
