"""The worker's trace writes: a flushed batch (series chunks, events, the webhook deliveries
they trigger) stored with the attempt's progress, conditional on the row still being that
attempt's. Status changes are core/lifecycle.py's."""

from typing import Any

from sqlalchemy.orm import Session

from core.lifecycle import json_safe, record_progress
from core.tables import Event
from core.traces import chunk_row
from core.webhooks import add_running_deliveries
from worker.instruments.base import Batch


def write_batch(
    session: Session,
    experiment_id: str,
    attempt: int,
    batch: Batch,
    step: int,
    spec: dict[str, Any] | None = None,
    notified: set[str] | None = None,
) -> bool:
    """Store one flushed batch and the progress. False when the row is no longer ours.
    With the normalised `spec`, the batch's first NaN, exploding or vanishing event of this
    attempt also becomes a webhook delivery, in the same transaction as the event itself.
    `notified`: the writer's memory of the events this attempt already has a delivery for,
    so later batches neither query nor write them again; updated once the batch is stored."""
    if not record_progress(session, experiment_id, attempt, step):
        return False
    for name, (steps, values) in batch.series.items():
        session.add(chunk_row(experiment_id, attempt, name, steps, values))
    for ev in batch.events:
        session.add(Event(experiment_id=experiment_id, attempt=attempt, **json_safe(ev)))
    done: set[str] = set()
    if spec is not None and spec.get("notify"):
        done = add_running_deliveries(session, experiment_id, attempt, batch.events, spec, notified)
    session.commit()
    if notified is not None:
        notified |= done
    return True
