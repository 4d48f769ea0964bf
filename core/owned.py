"""An owner's rows by id. Another owner's id reads as missing (404), never as forbidden, so ids
cannot be probed across tenants."""

from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from core.errors import Problem
from core.tables import Dataset, Experiment, Sweep

MAX_ID_LEN = 36


def get_experiment(session: Session, experiment_id: str, owner: str) -> Experiment:
    row = session.get(Experiment, experiment_id) if len(experiment_id) <= MAX_ID_LEN else None
    if row is None or row.owner != owner:
        raise Problem(404, "Not found", f"no experiment {experiment_id!r}", "not-found")
    return row


def get_sweep(session: Session, sweep_id: str, owner: str) -> Sweep:
    row = session.get(Sweep, sweep_id) if len(sweep_id) <= MAX_ID_LEN else None
    if row is None or row.owner != owner:
        raise Problem(404, "Not found", f"no sweep {sweep_id!r}", "not-found")
    return row


def get_dataset(session: Session, dataset_id: str, owner: str) -> Dataset:
    row = session.get(Dataset, dataset_id) if len(dataset_id) <= MAX_ID_LEN else None
    if row is None or row.owner != owner:
        raise Problem(404, "Not found", f"no dataset {dataset_id!r}", "not-found")
    return row


def sweep_experiments(session: Session, sweep: Sweep) -> list[Experiment]:
    """The sweep's experiments in the order they were made."""
    q = select(Experiment).where(Experiment.sweep_id == sweep.id)
    return list(session.scalars(q.order_by(Experiment.created_at)))


def owner_sweeps(
    session: Session, owner: str, after: tuple[datetime, str] | None, limit: int
) -> list[Sweep]:
    """The owner's sweeps, newest first, from after the (created_at, id) of `after`; up to
    `limit` of them."""
    q = select(Sweep).where(Sweep.owner == owner)
    if after is not None:
        created, sweep_id = after
        q = q.where(
            or_(Sweep.created_at < created, and_(Sweep.created_at == created, Sweep.id < sweep_id))
        )
    return list(session.scalars(q.order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit)))


def status_counts(session: Session, sweep_ids: list[str]) -> dict[str, dict[str, int]]:
    """sweep id -> {status: experiments}, in one grouped query."""
    out: dict[str, dict[str, int]] = {i: {} for i in sweep_ids}
    q = (
        select(Experiment.sweep_id, Experiment.status, func.count())
        .where(Experiment.sweep_id.in_(sweep_ids))
        .group_by(Experiment.sweep_id, Experiment.status)
    )
    for sweep_id, status, n in session.execute(q):
        out[sweep_id][status] = n
    return out
