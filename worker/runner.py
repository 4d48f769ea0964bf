"""One experiment, end to end on a worker: claim the row, train, store. No Celery in here."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from core import lifecycle
from core.db import get_sessionmaker
from core.diagnosis import diagnose
from core.logs import RequestIdThread, bound_request_id
from core.loops import LoopThread
from core.settings import Settings, get_settings
from core.spec import ExperimentCreate
from core.tables import Experiment
from worker import store
from worker.datasets import uploaded
from worker.instruments import default_instruments
from worker.instruments.base import Batch
from worker.train import train

log = logging.getLogger("gradlab.worker")
T = TypeVar("T")


def worker_name(settings: Settings) -> str:
    return settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"


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


def run_experiment(experiment_id: str, settings: Settings | None = None) -> str | None:
    """Run one queued experiment. Returns its final status, or None when it was not ours to run
    (already claimed, finished or cancelled: a duplicate delivery is harmless)."""
    settings = settings or get_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    with get_sessionmaker()() as s:
        row = lifecycle.claim(s, experiment_id, worker_name(settings))
    if row is None:
        log.info("experiment %s is not queued; nothing to do", experiment_id)
        return None
    # The submitting request's id on every line this run logs: one id from POST to result.
    with bound_request_id(row.request_id):
        log.info(
            "experiment started",
            extra={"experiment_id": experiment_id, "attempt": row.attempt},
        )
        status = _run_claimed(row, settings)
        log.info(
            "experiment ended",
            extra={"experiment_id": experiment_id, "attempt": row.attempt, "status": status},
        )
        return status


def _run_claimed(row: Experiment, settings: Settings) -> str | None:
    """Train a claimed row and store its result; None when the attempt was taken over."""
    experiment_id, attempt = row.id, row.attempt
    spec = ExperimentCreate.model_validate(row.spec)
    limit = min(spec.train.time_limit_s or math.inf, settings.soft_time_limit_s)
    soft_deadline = time.monotonic() + limit
    beat = Heartbeat(
        experiment_id,
        attempt,
        settings.heartbeat_interval_s,
        settings.cancel_poll_s,
        hard_deadline=soft_deadline + settings.hard_time_limit_grace_s,
    )
    writer = Writer(experiment_id, attempt, row.spec)
    beat.start()
    writer.start()
    status, summary, error, step = "failed", None, None, None
    try:
        task = None
        if spec.task.name == "dataset":
            task = uploaded.load_task(spec.task, row.owner, settings)
        result = train(
            spec,
            default_instruments(spec),
            on_flush=writer.put,
            should_stop=lambda: (
                beat.stop_training.is_set()
                or writer.lost.is_set()
                or time.monotonic() > soft_deadline
            ),
            flush_every_steps=settings.flush_every_steps,
            flush_every_s=settings.flush_every_s,
            task=task,
        )
        writer.put(result.batch, result.steps_run)
        status, summary, step = result.status, result.summary, result.steps_run
        if status == "cancelled" and beat.reason is None and time.monotonic() > soft_deadline:
            status = "failed"
            error = {
                "type": "time_limit",
                "message": f"stopped after the time limit of "
                f"{limit:.0f} s at step {step}; the traces so far are kept",
            }
        if status == "cancelled" and beat.reason == "lost" or writer.lost.is_set():
            log.warning(
                "experiment %s attempt %d was taken over; not storing", experiment_id, attempt
            )
            return None
    except uploaded.DatasetUnavailable as exc:
        log.warning("experiment %s: %s", experiment_id, exc)
        error = {"type": "dataset_unavailable", "message": str(exc)}
    except Exception as exc:  # ours or torch's: recorded on the row, the worker keeps serving
        log.exception("experiment %s failed", experiment_id)
        error = {
            "type": "training_error",
            "exception": type(exc).__name__,
            "message": str(exc)[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
    finally:
        beat.stop(join_s=None)  # a round in progress may be a slow database call
        writer.close()
    diagnosis = None if summary is None else diagnose(summary, row.spec, status)

    def store_result() -> bool:
        with get_sessionmaker()() as s:
            return lifecycle.finish(
                s,
                experiment_id,
                attempt,
                status,
                summary=summary,
                diagnosis=diagnosis,
                error=error,
                progress_step=step,
            )

    # A result finished while the database restarts is kept, not lost.
    with_retries(store_result, f"storing the result of {experiment_id}")
    return status
