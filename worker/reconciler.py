"""Keeps every experiment moving. The database is the source of truth and the broker only
rings the bell: a message can be lost (the embedded broker drops an in-flight task when its
worker is killed hard; Redis without persistence forgets its queue on restart), so

- `running` with a heartbeat older than `stale_after_s` goes back to `queued` (or `failed`
  once `max_attempts` attempts have been used), and
- `queued` for longer than `requeue_after_s` is sent again.

Sending twice is harmless: a worker only runs a row it can claim from `queued`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from core import lifecycle
from core.db import get_sessionmaker
from core.loops import LoopThread
from core.queue import enqueue
from core.settings import Settings
from core.tables import utcnow

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
        for row in lifecycle.stale_running(s, cutoff):
            if not lifecycle.settle_stale(
                s,
                row,
                cutoff,
                settings.max_attempts,
                settings.stale_after_s,
                settings.max_worker_memory,
            ):
                continue
            if row.status == "failed":
                counts["failed"] += 1
            elif row.status == "queued":
                to_send.append(row.id)
                counts["requeued"] += 1
        resent = lifecycle.forgotten_queued(s, now, settings.requeue_after_s)
        to_send += resent
        counts["resent"] = len(resent)
        s.commit()
    for experiment_id in to_send:
        send(experiment_id)
    return counts


class Reconciler(LoopThread):
    """A round at start-up too: a restarted worker picks up what its last life left."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("reconciler", settings.reconcile_interval_s, log)
        self.settings = settings

    def round(self) -> bool:
        counts = reconcile(get_sessionmaker(), self.settings)
        if any(counts.values()):
            log.info("reconciler: %s", counts)
        return False


def start_reconciler_thread(settings: Settings) -> Reconciler:
    thread = Reconciler(settings)
    thread.start()
    return thread
