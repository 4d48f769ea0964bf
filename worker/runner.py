"""One experiment, end to end on a worker: claim the row, train, store. No Celery in here."""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import traceback
from typing import Any

import torch
from sqlalchemy import select

from core import lifecycle
from core.db import get_sessionmaker
from core.diagnosis import diagnose
from core.logs import bound_request_id
from core.queue import enqueue
from core.settings import Settings, get_settings
from core.spec import ExperimentCreate, estimated_memory
from core.tables import Experiment
from worker import allocator
from worker.datasets import uploaded
from worker.heartbeat import Heartbeat
from worker.instruments import default_instruments
from worker.trace_writer import Writer, with_retries
from worker.train import train

log = logging.getLogger("gradlab.worker")


def worker_name(settings: Settings) -> str:
    return settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"


def out_of_memory(
    exc: BaseException, spec: ExperimentCreate, settings: Settings
) -> dict[str, Any] | None:
    """The row's error when `exc` is an allocation that failed (MemoryError, torch's
    OutOfMemoryError, or the CPU allocator's RuntimeError), else None. Recorded as a final
    failure: the same spec on the same worker would fail the same way on every attempt."""
    text = str(exc)
    if not (
        isinstance(exc, MemoryError | torch.OutOfMemoryError)
        or "can't allocate memory" in text
        or "not enough memory" in text
    ):
        return None
    return {
        "type": "out_of_memory",
        "exception": type(exc).__name__,
        "message": f"out of memory: {text[:500]}; the estimated peak for this spec is "
        f"{estimated_memory(spec) / 2**30:.3g} GiB, MAX_WORKER_MEMORY "
        f"{settings.max_worker_memory / 2**30:.3g} GiB",
    }


def run_experiment(experiment_id: str, settings: Settings | None = None) -> str | None:
    """Run one queued experiment for the message naming `experiment_id`: that one, or the one
    fair scheduling picks across owners (core.lifecycle.fair_pick). Returns its final status,
    or None when there was nothing to run (nothing queued, or every waiting owner at
    MAX_RUNNING_PER_OWNER: a duplicate delivery is harmless)."""
    settings = settings or get_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if settings.keep_freed_memory:
        allocator.keep_freed_memory()
    try:
        return _run_next(experiment_id, settings)
    finally:
        allocator.hand_back_freed_memory()


def _run_next(experiment_id: str, settings: Settings) -> str | None:
    with get_sessionmaker()() as s:
        row = lifecycle.claim_fair(
            s, experiment_id, worker_name(settings), settings.max_running_per_owner
        )
    if row is None:
        log.info("nothing to run for the message of %s", experiment_id)
        return None
    if row.id != experiment_id:
        log.info("the message of %s runs %s (fair share across owners)", experiment_id, row.id)
    experiment_id = row.id
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
    ring_for_waiting(experiment_id)
    return status


def ring_for_waiting(finished_id: str) -> None:
    """A run's end may free a slot under an owner's running cap: ring once more for a queued
    experiment, since a message that found every waiting owner at the cap claimed nothing."""
    try:
        with get_sessionmaker()() as s:
            waiting = s.scalar(select(Experiment.id).where(Experiment.status == "queued").limit(1))
        if waiting is not None:
            enqueue(waiting)
    except Exception:  # the reconciler sends what is left queued
        log.warning("could not ring for the queue after %s", finished_id, exc_info=True)


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
        error = out_of_memory(exc, spec, settings) or {
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
