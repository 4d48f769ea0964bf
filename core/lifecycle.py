"""Every status change of an experiment, and the outbox row that goes with it.

    queued --claim--> running --finish--> succeeded | diverged | failed | cancelled
    queued --cancel--> cancelled             running --stale--> queued (retry) | failed
                                             running --cancel requested--> (the run stops)

Each change is one guarded UPDATE: it names the status (and for a running row the attempt) it
expects, so of two writers racing for a row one wins and the other learns it lost. A worker
presumed dead cannot overwrite its retry; a cancel cannot undo a claim. Functions take a
session or a connection and leave the commit to the caller unless they say otherwise."""

import math
import random
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from core.errors import Problem
from core.pipeline import Step, in_one_round_trip
from core.spec import ExperimentCreate, estimated_memory
from core.status import ACTIVE, TERMINAL
from core.tables import Event, Experiment, WebhookDelivery, new_id, utcnow
from core.traces import delete_earlier_attempts, delete_traces
from core.webhooks import subscribed, terminal_delivery

EXPERIMENTS = Experiment.__table__


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


# --- submit: queued, under the owner's cap ----------------------------------------------------


def active_rows(owner: Any) -> Select:
    """The owner's queued or running experiments, in the (owner, status) index. The statuses
    are bound one by one, not as an expanding IN, whose SQL waits for its values: the insert
    under the cap is compiled once for a pipeline (core.pipeline)."""
    return select(EXPERIMENTS.c.id).where(
        EXPERIMENTS.c.owner == owner,
        EXPERIMENTS.c.status.in_([literal(s) for s in sorted(ACTIVE)]),
    )


# The row goes in only when the owner has no cap-th active experiment yet: the cap check and
# the insert in one statement, one round trip. It asks for the row at OFFSET cap - 1, an index
# walk that stops there, never a count.
_OWNER = bindparam("owner", type_=EXPERIMENTS.c.owner.type)
INSERT_UNDER_CAP = (
    insert(EXPERIMENTS)
    .from_select(
        [c.name for c in EXPERIMENTS.c],
        select(
            *(
                _OWNER if c.name == "owner" else bindparam(c.name, type_=c.type)
                for c in EXPERIMENTS.c
            )
        ).where(~exists(active_rows(_OWNER).offset(bindparam("cap_offset")).limit(1))),
    )
    .returning(EXPERIMENTS.c.id)
)  # no row back: over the cap (rowcount is -1 on psycopg)


UNSET_AT_SUBMIT = (
    "worker",
    "started_at",
    "heartbeat_at",
    "finished_at",
    "summary",
    "diagnosis",
    "error",
    "note",
)


def queued_values(
    owner: str,
    spec: dict[str, Any],
    *,
    name: str | None,
    tags: list[str],
    request_id: str | None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    sweep_id: str | None = None,
    sweep_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every column of a new `queued` experiment running the normalised `spec`."""
    now = utcnow()
    return dict(
        id=new_id(),
        status="queued",
        name=name,
        tags=tags,
        owner=owner,
        spec=spec,
        sweep_id=sweep_id,
        sweep_params=sweep_params,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        request_id=request_id,
        source="service",
        attempt=0,
        cancel_requested=False,
        progress_step=0,
        total_steps=spec["train"]["steps"],
        created_at=now,
        enqueued_at=now,
        **dict.fromkeys(UNSET_AT_SUBMIT),
    )


# An owner's submissions on PostgreSQL run under one of SLOTS advisory locks: at most SLOTS
# of them are between their cap check and their commit at once, so a check that leaves room for
# SLOTS more rows cannot be passed by the others in flight. A submission near the cap takes every
# slot and counts alone. One lock for all would queue an owner's submissions behind each other's
# commits (its WAL flush): a third of the throughput under concurrent clients.
SLOTS = 8


# Ordered by slot, so that two takers of every slot cannot deadlock.
_TAKE_EVERY_SLOT = text(
    "SELECT count(pg_advisory_xact_lock(hashtext(:owner), s))"
    " FROM (SELECT s FROM generate_series(0, :slots - 1) AS s ORDER BY s) AS slots"
)
# The first free slot from a random start (try-locks, which never wait), else the start's,
# waited for. One statement, so that it can go in a pipeline, where no answer can steer the
# next statement: COALESCE evaluates its second argument only when the first is null. A
# waiter holds no slot, so it cannot be part of a deadlock.
_TAKE_A_SLOT = text(
    "SELECT coalesce("
    "(SELECT slot FROM (SELECT (s + :start) % :slots AS slot"
    " FROM generate_series(0, :slots - 1) AS s) AS slots"
    " WHERE pg_try_advisory_xact_lock(hashtext(:owner), slot) LIMIT 1),"
    " (SELECT :start FROM pg_advisory_xact_lock(hashtext(:owner), :start)))"
)


def lock_owner(conn: Connection | Session, owner: str) -> None:
    """Serialise the owner's submissions until the transaction ends, so that a cap check and
    the inserts after it see every other submission of the owner: every slot's
    transaction-scoped advisory lock on PostgreSQL (READ COMMITTED would let two concurrent
    checks pass the cap together); on SQLite the database's write lock, taken by a write that
    changes nothing."""
    bind = conn.get_bind() if isinstance(conn, Session) else conn
    if bind.dialect.name == "postgresql":
        conn.execute(_TAKE_EVERY_SLOT, {"owner": owner, "slots": SLOTS})
    else:
        conn.execute(
            update(EXPERIMENTS).where(EXPERIMENTS.c.id.is_(None)).values(owner=EXPERIMENTS.c.owner)
        )


def _slot_params(owner: str) -> dict[str, Any]:
    return {"owner": owner, "slots": SLOTS, "start": random.randrange(SLOTS)}


def _take_a_slot(conn: Connection, owner: str) -> int:
    """One of the owner's slots until the transaction ends: a free one, else wait for one."""
    return conn.scalar(_TAKE_A_SLOT, _slot_params(owner))


def insert_queued(conn: Connection, values: dict[str, Any], cap: int) -> bool:
    """Insert a `queued` row (every column in `values`) unless the owner already has `cap`
    active experiments, under the owner's lock. False when over the cap; nothing is written
    then. The caller commits; a False leaves the transaction rolled back."""
    owner = values["owner"]
    if conn.dialect.name == "postgresql" and cap > SLOTS:
        # The statement after the lock reads a snapshot taken after it: what the slot's last
        # holder committed is counted.
        _take_a_slot(conn, owner)
        if _insert_if_fewer(conn, values, cap - SLOTS + 1):
            return True
        conn.rollback()  # near the cap: count alone, holding no slot while waiting for all
    lock_owner(conn, owner)
    if _insert_if_fewer(conn, values, cap):
        return True
    conn.rollback()
    return False


def _insert_if_fewer(conn: Connection, values: dict[str, Any], limit: int) -> bool:
    return conn.execute(INSERT_UNDER_CAP, {**values, "cap_offset": limit - 1}).first() is not None


def submit_queued(conn: Connection, values: dict[str, Any], cap: int) -> bool:
    """insert_queued, committed. On PostgreSQL, given a connection with no transaction open,
    each try is one round trip (core.pipeline): a slot and the insert against cap - SLOTS + 1
    far from the cap; near it, that try commits nothing and a second one takes every slot and
    counts alone. False when over the cap; nothing is written then."""
    if conn.dialect.name != "postgresql" or conn.in_transaction():
        if not insert_queued(conn, values, cap):
            return False
        conn.commit()
        return True
    owner = values["owner"]
    if cap > SLOTS and _insert_in_one_round_trip(
        conn, (_TAKE_A_SLOT, _slot_params(owner)), values, cap - SLOTS + 1
    ):
        return True
    every_slot = (_TAKE_EVERY_SLOT, {"owner": owner, "slots": SLOTS})
    return _insert_in_one_round_trip(conn, every_slot, values, cap)


def _insert_in_one_round_trip(
    conn: Connection, lock: Step, values: dict[str, Any], limit: int
) -> bool:
    """BEGIN, the lock, the insert under `limit`, COMMIT. The insert is a statement of its own:
    its snapshot is taken once the lock is held."""
    insert_step = (INSERT_UNDER_CAP, {**values, "cap_offset": limit - 1})
    _, inserted = in_one_round_trip(conn, [lock, insert_step])
    return bool(inserted)


def over_cap(conn: Connection | Session, owner: str, adding: int, cap: int) -> Problem:
    active = conn.scalar(select(func.count()).select_from(active_rows(owner).subquery()))
    return Problem(
        429,
        "Too many active experiments",
        f"{active} queued or running; adding {adding} would pass the cap of {cap}",
        "active-cap",
        headers={"Retry-After": "30"},
        active=active,
        cap=cap,
    )


def check_active_cap(session: Session, owner: str, adding: int, cap: int) -> None:
    """429 when the owner's queued + running experiments would pass the cap."""
    # Is there a (cap - adding + 1)-th active row? An index walk that stops there, not a count.
    if session.execute(active_rows(owner).offset(max(cap - adding, 0)).limit(1)).first():
        raise over_cap(session, owner, adding, cap)


# --- external runs: created running by their client (gradlab.watch) --------------------------


def start_external(
    session: Session,
    owner: str,
    spec: dict[str, Any],
    *,
    name: str | None,
    tags: list[str],
    total_steps: int,
    request_id: str | None,
    client: str | None,
    cap: int,
) -> Experiment:
    """A new external run, `running` at once (attempt 1: there is no other), under the owner's
    active cap like a submission. Commits."""
    lock_owner(session, owner)  # a concurrent submission is counted, not raced
    check_active_cap(session, owner, 1, cap)
    now = utcnow()
    row = Experiment(
        id=new_id(),
        status="running",
        source="external",
        name=name,
        tags=tags,
        owner=owner,
        spec=spec,
        request_id=request_id,
        attempt=1,
        worker=client,
        cancel_requested=False,
        progress_step=0,
        total_steps=total_steps,
        created_at=now,
        started_at=now,
        heartbeat_at=now,
    )
    session.add(row)
    session.commit()
    return row


# --- cancel ---------------------------------------------------------------------------------


def cancel_queued(session: Session, which: ColumnElement[bool], now: datetime) -> list[str]:
    """queued -> cancelled for the experiments `which` picks, in one guarded UPDATE (a worker
    may claim one meanwhile: it is left alone); the `finished` webhook of each one cancelled
    here, if subscribed, in the same transaction. Returns the ids cancelled."""
    ids = list(
        session.scalars(
            update(Experiment)
            .where(which, Experiment.status == "queued")
            .values(status="cancelled", cancel_requested=True, finished_at=now)
            .returning(Experiment.id)
            .execution_options(synchronize_session=False)
        )
    )
    if ids:
        fresh = select(Experiment).where(Experiment.id.in_(ids))
        for row in session.scalars(fresh.execution_options(populate_existing=True)):
            if (note := terminal_delivery(row)) is not None:
                session.add(note)
    return ids


def request_cancel_running(session: Session, which: ColumnElement[bool]) -> int:
    """Flag the running experiments `which` picks; each run stops at its next cancel poll.
    Returns how many were flagged."""
    res = session.execute(
        update(Experiment)
        .where(which, Experiment.status == "running")
        .values(cancel_requested=True)
    )
    return res.rowcount


def cancel_requested(session: Session, experiment_id: str) -> bool:
    return bool(
        session.scalar(select(Experiment.cancel_requested).where(Experiment.id == experiment_id))
    )


# --- what a user changes after submitting -----------------------------------------------------

EDITABLE = ("name", "tags", "note")


def edit(session: Session, row: Experiment, changes: dict[str, Any]) -> None:
    """Name, tags, note: any status, since no worker writes them. Commits."""
    for column, value in changes.items():
        if column not in EDITABLE:
            raise ValueError(f"{column} is not editable")
        setattr(row, column, value)
    session.commit()


def delete_finished(session: Session, experiment_id: str) -> bool:
    """A finished experiment and everything stored for it (traces, events, webhook
    deliveries), in one transaction. Guarded on a terminal status: a queued or running one is
    left alone (False), since a worker may be writing to it. Commits."""
    res = session.execute(
        delete(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status.in_(sorted(TERMINAL)))
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        session.rollback()
        return False
    # PostgreSQL and SQLite (foreign_keys=ON) cascade these; deleting them by name keeps a
    # database opened without the pragma from holding orphans.
    delete_traces(session, experiment_id)
    session.execute(delete(Event).where(Event.experiment_id == experiment_id))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.experiment_id == experiment_id))
    session.commit()
    return True


# --- a worker's attempt ---------------------------------------------------------------------


def ours(experiment_id: str, attempt: int) -> tuple:
    """The rows this attempt may still write: running, and not handed to another attempt."""
    return (
        Experiment.id == experiment_id,
        Experiment.attempt == attempt,
        Experiment.status == "running",
    )


# --- fair scheduling ------------------------------------------------------------------------


def fair_pick(session: Session, hint_id: str, max_running: int) -> str | None:
    """The queued experiment a worker should run, given the one its message named: among the
    owners with queued experiments and fewer than `max_running` running, the one with the
    fewest running, then the one served least recently (its latest start), then the one
    waiting longest; of that owner, the named experiment when it is theirs and queued, else
    their oldest queued. None when every owner with queued experiments is at the cap.
    The queue is the broker's (first in, first out): the message is a bell, and the database
    decides which row it rings for, so one owner's backlog cannot hold every worker."""
    t = EXPERIMENTS
    waiting = (
        select(t.c.owner, func.min(t.c.created_at).label("oldest"))
        .where(t.c.status == "queued")
        .group_by(t.c.owner)
        .subquery()
    )
    r, s_ = t.alias("r"), t.alias("s")
    running = (
        select(func.count())
        .where(r.c.owner == waiting.c.owner, r.c.status == "running")
        .scalar_subquery()
    )
    last_start = select(func.max(s_.c.started_at)).where(s_.c.owner == waiting.c.owner)
    candidates = session.execute(
        select(
            waiting.c.owner,
            running.label("running"),
            last_start.scalar_subquery().label("last_start"),
            waiting.c.oldest,
        )
    ).all()
    open_ = [c for c in candidates if c.running < max_running]
    if not open_:
        return None
    epoch = datetime.min
    best = min(
        open_,
        key=lambda c: (
            c.running,
            _naive(c.last_start) if c.last_start else epoch,
            _naive(c.oldest),
        ),
    )
    hint = session.execute(select(t.c.owner, t.c.status).where(t.c.id == hint_id)).first()
    if hint is not None and hint.owner == best.owner and hint.status == "queued":
        return hint_id
    return session.scalar(
        select(t.c.id)
        .where(t.c.owner == best.owner, t.c.status == "queued")
        .order_by(t.c.created_at, t.c.id)
        .limit(1)
    )


def _naive(dt: datetime) -> datetime:
    return dt.replace(tzinfo=None)


def lock_claims(session: Session) -> None:
    """Serialise claims until the transaction ends, so a pick and its claim see every other
    claim (the per-owner running cap holds under concurrent workers)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK)))
    else:
        session.execute(
            update(EXPERIMENTS).where(EXPERIMENTS.c.id.is_(None)).values(owner=EXPERIMENTS.c.owner)
        )


CLAIM_LOCK = 0x6772_6164  # an advisory lock key of our own


def claim_fair(session: Session, hint_id: str, worker: str, max_running: int) -> Experiment | None:
    """Claim the experiment fair_pick chooses for a message naming `hint_id`. Commits; None
    when there is nothing to claim (every owner waiting is at its running cap, or nothing is
    queued)."""
    lock_claims(session)
    chosen = fair_pick(session, hint_id, max_running)
    if chosen is None:
        session.rollback()
        return None
    return claim(session, chosen, worker)


def claim(session: Session, experiment_id: str, worker: str) -> Experiment | None:
    """queued -> running, atomically: of two deliveries of the same message, one wins.
    Commits; None when another claim (or a cancel) came first."""
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
    delete_earlier_attempts(session, experiment_id, row.attempt)
    # The record of why an attempt was retried stays.
    session.execute(
        delete(Event).where(
            Event.experiment_id == experiment_id,
            Event.attempt < row.attempt,
            Event.kind != "worker_lost",
        )
    )
    session.commit()
    return row


def record_progress(session: Session, experiment_id: str, attempt: int, step: int) -> bool:
    """The attempt's progress and heartbeat; False (rolled back) when the row is not ours."""
    res = session.execute(
        update(Experiment)
        .where(*ours(experiment_id, attempt))
        .values(progress_step=step, heartbeat_at=utcnow())
    )
    if res.rowcount != 1:
        session.rollback()
        return False
    return True


def heartbeat(session: Session, experiment_id: str, attempt: int) -> tuple[bool, bool]:
    """Commits the beat. Returns (still ours, cancel requested)."""
    res = session.execute(
        update(Experiment).where(*ours(experiment_id, attempt)).values(heartbeat_at=utcnow())
    )
    session.commit()
    if res.rowcount != 1:
        return False, False
    return True, cancel_requested(session, experiment_id)


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
    """running -> `status` for this attempt, with its `finished` delivery if subscribed.
    Commits; False when the row was no longer ours."""
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


# --- the reconciler -------------------------------------------------------------------------


def stale_running(session: Session, cutoff: datetime) -> list[Experiment]:
    """Running rows whose heartbeat is older than `cutoff`, locked where the database can."""
    return list(
        session.scalars(
            select(Experiment)
            .where(Experiment.status == "running", Experiment.heartbeat_at < cutoff)
            .with_for_update(skip_locked=True)
        ).all()
    )


# A worker lost twice at the same step, running a spec whose estimated peak is at least this
# fraction of MAX_WORKER_MEMORY, was most likely killed for memory (the kernel's OOM killer
# sends SIGKILL: nothing in the worker can report it): the row fails then, saying so, instead
# of burning its remaining attempts.
OOM_SUSPECT_FRACTION = 0.25


def lost_for_memory(session: Session, row: Experiment, memory_limit: float) -> str | None:
    """Why `row`'s lost worker was most likely killed for memory, or None."""
    try:
        estimate = estimated_memory(ExperimentCreate.model_validate(row.spec))
    except ValueError:  # a spec stored before a limit tightened: no estimate, no verdict
        return None
    if estimate < OOM_SUSPECT_FRACTION * memory_limit:
        return None
    before = session.scalar(
        select(func.count()).where(
            Event.experiment_id == row.id,
            Event.kind == "worker_lost",
            Event.attempt < row.attempt,
            Event.step == row.progress_step,
        )
    )
    if not before:
        return None
    return (
        f"the worker was lost at step {row.progress_step} on {before + 1} attempts, with an "
        f"estimated peak memory of {estimate / 2**30:.3g} GiB against MAX_WORKER_MEMORY "
        f"{memory_limit / 2**30:.3g} GiB: most likely killed for memory; lower "
        "train.batch_size, task.seq_len, model.hidden_size or model.num_layers"
    )


def settle_stale(
    session: Session,
    row: Experiment,
    cutoff: datetime,
    max_attempts: int,
    stale_after_s: float,
    memory_limit: float = math.inf,
) -> bool:
    """A stale running row goes back to `queued`, or to `cancelled` when a cancel was asked,
    or to `failed` once its attempts are spent, when it was lost for memory (see
    lost_for_memory), or at once for an external run (`client_lost`); with its `worker_lost`
    (or `client_lost`) event and `finished` delivery. False when the row moved meanwhile
    (nothing written)."""
    now = utcnow()
    detail: dict[str, Any] = {"worker": row.worker, "attempt": row.attempt}
    values: dict[str, Any]
    memory = (
        None
        if row.cancel_requested or row.source == "external"
        else lost_for_memory(session, row, memory_limit)
    )
    if row.cancel_requested:
        values = {"status": "cancelled", "finished_at": now}
    elif row.source == "external":  # a user's own loop: nothing here can run it again
        values = {
            "status": "failed",
            "finished_at": now,
            "error": {
                "type": "client_lost",
                "message": f"no heartbeat from the client for {stale_after_s:.0f} s; an "
                "external run is not re-run",
                **detail,
            },
        }
    elif memory is not None:
        values = {
            "status": "failed",
            "finished_at": now,
            "error": {"type": "out_of_memory", "message": memory, **detail},
        }
    elif row.attempt >= max_attempts:
        values = {
            "status": "failed",
            "finished_at": now,
            "error": {
                "type": "worker_lost",
                "message": f"no heartbeat for {stale_after_s:.0f} s on attempt "
                f"{row.attempt} of {max_attempts}; giving up",
                **detail,
            },
        }
    else:
        values = {"status": "queued", "enqueued_at": now}
    # Guarded: FOR UPDATE is a no-op on SQLite, so another reconciler (or the worker, beating
    # again or finishing) may have moved the row since it was read. Only the update that
    # matches writes the event and the `finished` delivery.
    res = session.execute(
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
        return False
    session.refresh(row)
    if (note := terminal_delivery(row)) is not None:
        session.add(note)
    session.add(
        Event(
            experiment_id=row.id,
            attempt=row.attempt,
            step=row.progress_step,
            kind="client_lost" if row.source == "external" else "worker_lost",
            detail={**detail, "now": row.status},
        )
    )
    return True


def forgotten_queued(session: Session, now: datetime, requeue_after_s: float) -> list[str]:
    """Queued rows not sent for `requeue_after_s`: marked sent now; their ids, to send again."""
    rows = session.scalars(
        select(Experiment)
        .where(
            Experiment.status == "queued",
            Experiment.enqueued_at < now - timedelta(seconds=requeue_after_s),
        )
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        row.enqueued_at = now
    return [row.id for row in rows]
