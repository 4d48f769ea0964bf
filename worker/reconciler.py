"""Keeps every experiment moving. The database is the source of truth and the broker only
rings the bell: a message can be lost (the embedded broker drops an in-flight task when its
worker is killed hard; Redis without persistence forgets its queue on restart), so

- `running` with a heartbeat older than `stale_after_s` goes back to `queued` (or `failed`
  once `max_attempts` attempts have been used), and
- `queued` for longer than `requeue_after_s` is sent again.

Sending twice is harmless: a worker only runs a row it can claim from `queued`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.db import get_sessionmaker
from core.queue import enqueue
from core.settings import Settings
from core.tables import Event, Experiment, utcnow
from core.webhooks import terminal_delivery

log = logging.getLogger("gradlab.reconciler")


def reconcile(
    sessions: sessionmaker[Session],
    settings: Settings,
    send: Callable[[str], None] = enqueue,
) -> dict[str, int]:
    now = utcnow()
    counts = {"requeued": 0, "failed": 0, "resent": 0}
    to_send: list[str] = []
    cutoff = now - timedelta(seconds=settings.stale_after_s)
    with sessions() as s:
        stale = s.scalars(
            select(Experiment)
            .where(Experiment.status == "running", Experiment.heartbeat_at < cutoff)
            .with_for_update(skip_locked=True)
        ).all()
        for row in stale:
            detail: dict[str, Any] = {"worker": row.worker, "attempt": row.attempt}
            values: dict[str, Any]
            if row.cancel_requested:
                values = {"status": "cancelled", "finished_at": now}
            elif row.attempt >= settings.max_attempts:
                values = {
                    "status": "failed",
                    "finished_at": now,
                    "error": {
                        "type": "worker_lost",
                        "message": f"no heartbeat for {settings.stale_after_s:.0f} s on attempt "
                        f"{row.attempt} of {settings.max_attempts}; giving up",
                        **detail,
                    },
                }
            else:
                values = {"status": "queued", "enqueued_at": now}
            # Guarded: FOR UPDATE is a no-op on SQLite, so another reconciler (or the worker,
            # beating again or finishing) may have moved the row since it was read. Only the
            # update that matches writes the event and the `finished` delivery.
            res = s.execute(
                update(Experiment)
                .where(
                    Experiment.id == row.id,
                    Experiment.status == "running",
                    Experiment.attempt == row.attempt,
                    Experiment.heartbeat_at < cutoff,
                )
                .values(**values),
                execution_options={"synchronize_session": False},
            )
            if res.rowcount != 1:
                continue
            s.refresh(row)
            if row.status == "failed":
                counts["failed"] += 1
            elif row.status == "queued":
                to_send.append(row.id)
                counts["requeued"] += 1
            if (note := terminal_delivery(row)) is not None:
                s.add(note)
            s.add(
                Event(
                    experiment_id=row.id,
                    attempt=row.attempt,
                    step=row.progress_step,
                    kind="worker_lost",
                    detail={**detail, "now": row.status},
                )
            )
        forgotten = s.scalars(
            select(Experiment)
            .where(
                Experiment.status == "queued",
                Experiment.enqueued_at < now - timedelta(seconds=settings.requeue_after_s),
            )
            .with_for_update(skip_locked=True)
        ).all()
        for row in forgotten:
            row.enqueued_at = now
            to_send.append(row.id)
            counts["resent"] += 1
        s.commit()
    for experiment_id in to_send:
        send(experiment_id)
    return counts


def start_reconciler_thread(settings: Settings) -> threading.Thread:
    def loop() -> None:
        stop = threading.Event()
        while True:  # a round at start-up too: a restarted worker picks up what its last life left
            try:
                counts = reconcile(get_sessionmaker(), settings)
                if any(counts.values()):
                    log.info("reconciler: %s", counts)
            except Exception:  # a database or broker outage: try again next round
                log.warning("reconciler round failed", exc_info=True)
            if stop.wait(settings.reconcile_interval_s):
                return

    thread = threading.Thread(target=loop, daemon=True, name="reconciler")
    thread.start()
    return thread
