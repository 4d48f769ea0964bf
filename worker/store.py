"""The worker's trace writes: a flushed batch (series chunks, events, the webhook deliveries
they trigger) stored with the attempt's progress, conditional on the row still being that
attempt's. Status changes are core/lifecycle.py's."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.lifecycle import json_safe, record_progress
from core.tables import Event, Experiment, WebhookDelivery, utcnow
from core.traces import chunk_row
from core.webhooks import delivery, subscribed
from worker.instruments.base import Batch

# Loop events that a spec's notify.events may subscribe to: event kind -> webhook event.
NOTIFIED_EVENTS = {"nonfinite": "nan", "exploding": "exploding", "vanishing": "vanishing"}


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
        done = add_running_deliveries(session, experiment_id, attempt, batch, spec, notified)
    session.commit()
    if notified is not None:
        notified |= done
    return True


def add_running_deliveries(
    session: Session,
    experiment_id: str,
    attempt: int,
    batch: Batch,
    spec: dict[str, Any],
    notified: set[str] | None = None,
) -> set[str]:
    """One delivery per subscribed event per attempt: `nan` with skip_step may fire every step,
    and a receiver wants to hear it once. Returns the events this attempt now has a delivery
    for (among this batch's). Only the attempt's own writer gets here (write_batch's guarded
    update comes first, and one attempt has one writer), so two writers cannot race on a
    delivery; the unique index on (experiment_id, attempt, event) would refuse a second."""
    firsts: dict[str, dict[str, Any]] = {}
    for ev in batch.events:
        event = NOTIFIED_EVENTS.get(ev["kind"])
        if (
            event is not None
            and event not in firsts
            and event not in (notified or ())
            and subscribed(spec, event)
        ):
            firsts[event] = ev
    if not firsts:
        return set()
    sent = set(
        session.scalars(
            select(WebhookDelivery.event).where(
                WebhookDelivery.experiment_id == experiment_id,
                WebhookDelivery.attempt == attempt,
                WebhookDelivery.event.in_(list(firsts)),
            )
        )
    )
    if set(firsts) <= sent:
        return sent
    row = session.get(Experiment, experiment_id)
    assert row is not None
    for event, ev in firsts.items():
        if event not in sent:
            url = subscribed(spec, event)
            assert url is not None
            session.add(
                delivery(
                    row,
                    attempt,
                    event,
                    url,
                    step=ev["step"],
                    detail=json_safe(ev["detail"]),
                    occurred_at=utcnow().isoformat(),
                )
            )
    return set(firsts)
