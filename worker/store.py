"""Every database write the worker makes. Writes that finish an attempt are conditional on
the row still being that attempt's, so a worker presumed dead cannot overwrite its retry."""

import math
from typing import Any

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core.tables import Event, Experiment, SeriesChunk, WebhookDelivery, utcnow
from core.traces import STEP_DTYPE, VALUE_DTYPE
from core.webhooks import delivery, subscribed, terminal_delivery
from worker.instruments.base import Batch

# Loop events that a spec's notify.events may subscribe to: event kind -> webhook event.
NOTIFIED_EVENTS = {"nonfinite": "nan", "exploding": "exploding", "vanishing": "vanishing"}


def json_safe(value: Any) -> Any:
    """JSON has no NaN or Infinity (PostgreSQL refuses them): they are stored as the strings
    "nan", "inf" and "-inf", which say more than a null would."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def ours(experiment_id: str, attempt: int) -> tuple:
    """The rows this attempt may still write: running, and not handed to another attempt."""
    return (
        Experiment.id == experiment_id,
        Experiment.attempt == attempt,
        Experiment.status == "running",
    )


def claim(session: Session, experiment_id: str, worker: str) -> Experiment | None:
    """queued -> running, atomically: of two deliveries of the same message, one wins."""
    now = utcnow()
    res = session.execute(
        update(Experiment)
        .where(
            Experiment.id == experiment_id,
            Experiment.status == "queued",
            Experiment.cancel_requested.is_(False),
        )
        .values(
            status="running",
            attempt=Experiment.attempt + 1,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
            progress_step=0,
        )
    )
    if res.rowcount != 1:
        session.rollback()
        return None
    row = session.get(Experiment, experiment_id, populate_existing=True)
    assert row is not None
    # A failed attempt's partial traces are not mixed with this one's; the record of why it
    # was retried stays.
    stale = (SeriesChunk.experiment_id == experiment_id, SeriesChunk.attempt < row.attempt)
    session.execute(delete(SeriesChunk).where(*stale))
    session.execute(
        delete(Event).where(
            Event.experiment_id == experiment_id,
            Event.attempt < row.attempt,
            Event.kind != "worker_lost",
        )
    )
    session.commit()
    return row


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
    res = session.execute(
        update(Experiment)
        .where(*ours(experiment_id, attempt))
        .values(progress_step=step, heartbeat_at=utcnow())
    )
    if res.rowcount != 1:
        session.rollback()
        return False
    for name, (steps, values) in batch.series.items():
        session.add(
            SeriesChunk(
                experiment_id=experiment_id,
                attempt=attempt,
                name=name,
                first_step=steps[0],
                width=values.shape[1],
                steps=np.asarray(steps, dtype=STEP_DTYPE).tobytes(),
                values=np.ascontiguousarray(values, dtype=VALUE_DTYPE).tobytes(),
            )
        )
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


def heartbeat(session: Session, experiment_id: str, attempt: int) -> tuple[bool, bool]:
    """Returns (still ours, cancel requested)."""
    res = session.execute(
        update(Experiment).where(*ours(experiment_id, attempt)).values(heartbeat_at=utcnow())
    )
    session.commit()
    if res.rowcount != 1:
        return False, False
    cancel = session.scalar(
        select(Experiment.cancel_requested).where(Experiment.id == experiment_id)
    )
    return True, bool(cancel)


def cancel_requested(session: Session, experiment_id: str) -> bool:
    return bool(
        session.scalar(select(Experiment.cancel_requested).where(Experiment.id == experiment_id))
    )


def finish(
    session: Session,
    experiment_id: str,
    attempt: int,
    status: str,
    *,
    summary: dict[str, Any] | None = None,
    diagnosis: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    progress_step: int | None = None,
) -> bool:
    values: dict[str, Any] = dict(
        status=status,
        summary=json_safe(summary),
        diagnosis=json_safe(diagnosis),
        error=error,
        finished_at=utcnow(),
    )
    if progress_step is not None:
        values["progress_step"] = progress_step
    # RETURNING the spec: the row is read back only when it asks for the `finished` webhook.
    # The guard lets one finish per attempt through (of the worker, the reconciler and a
    # cancel, one moves the row out of `running`), so one `finished` delivery per attempt.
    updated = session.execute(
        update(Experiment)
        .where(*ours(experiment_id, attempt))
        .values(**values)
        .returning(Experiment.id, Experiment.spec),
        execution_options={"synchronize_session": False},
    ).first()
    done = updated is not None
    if updated is not None and subscribed(updated.spec, "finished"):
        row = session.get(Experiment, experiment_id, populate_existing=True)
        if row is not None and (note := terminal_delivery(row)) is not None:
            session.add(note)  # the outbox: stored with the final status or not at all
    session.commit()
    return done
