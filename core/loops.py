"""One shape for the background loops (the reconciler, the webhook dispatcher, a run's
heartbeat): a daemon thread that runs a round, then waits, until stopped. A round that raises
is logged and the loop goes on, since the usual cause is a database or broker outage that the
next round outlives; a round that says it left work behind is followed at once."""

import logging
import threading
from collections.abc import Callable

from core.logs import RequestIdThread


class LoopThread(RequestIdThread):
    """Subclasses implement `round()`; it returns True when there is more to do right away."""

    def __init__(
        self, name: str, interval_s: float | Callable[[], float], log: logging.Logger
    ) -> None:
        super().__init__(name)
        self._interval = interval_s
        self._log = log
        self._stopped = threading.Event()

    def round(self) -> bool:
        raise NotImplementedError

    def interval(self) -> float:
        return self._interval() if callable(self._interval) else self._interval

    def work(self) -> None:
        while not self._stopped.is_set():
            busy = False
            try:
                busy = bool(self.round())
            except Exception:
                self._log.warning("%s round failed", self.name, exc_info=True)
            if not busy:
                self._stopped.wait(self.interval())

    def stop(self, join_s: float | None = 10.0) -> None:
        """Ends the loop after the round in progress; waits up to `join_s` for it."""
        self._stopped.set()
        if join_s is not None and self.is_alive() and threading.current_thread() is not self:
            self.join(join_s)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()
