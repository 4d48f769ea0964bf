"""/v1/experiments: submit, list, read, events, cancel, webhooks. The traces are in traces.py."""

import asyncio
import hashlib
import logging
from datetime import timedelta
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from sqlalchemy import (
    Connection,
    Row,
    and_,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api.deps import Owner, SessionDep, current_owner
from api.guard import read_object
from api.pagination import decode_cursor, encode_cursor
from api.responses import FastJSON
from api.schemas import EventsRead, ExperimentPage, ExperimentRead
from api.serializers import experiment_view
from core.budgets import Limits, check_budgets
from core.datasets import check_task
from core.db import get_engine, get_read_engine, get_sessionmaker
from core.errors import Problem, invalid_field
from core.fast_read import UNAVAILABLE
from core.lifecycle import (
    EXPERIMENTS,
    cancel_queued,
    over_cap,
    queued_values,
    request_cancel_running,
    submit_queued,
)
from core.logs import request_id
from core.owned import get_experiment
from core.queue import enqueue
from core.settings import get_settings
from core.spec import ExperimentCreate, ModelSpec, TaskShape
from core.status import StatusName
from core.tables import EVENT_KINDS, Event, Experiment, WebhookDelivery, as_utc, utcnow
from core.webhooks import check_notify

log = logging.getLogger("gradlab.api")
EventKind = Literal[EVENT_KINDS]
Verdict = Literal["healthy", "vanishing", "exploding", "diverged", "inconclusive"]
Cell = ModelSpec.model_fields["cell"].annotation
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold a NUL: a 422, not a 500
router = APIRouter(prefix="/v1/experiments", tags=["experiments"])


def dataset_shape(owner: str, spec: ExperimentCreate) -> TaskShape | None:
    with get_sessionmaker()() as session:
        return check_task(session, owner, spec)


async def read_spec(request: Request, owner: str) -> ExperimentCreate:
    """The body as a spec (api.guard.read_object: size, depth, NUL and NaN checked), within
    the compute, memory and stored-volume budgets (an uploaded dataset's T and F read from
    its row; built-in tasks cost no lookup)."""
    data = await read_object(request)
    spec = ExperimentCreate.model_validate(data)  # ValidationError -> 422 naming the fields
    shape = None
    if spec.task.name == "dataset":
        shape = await run_in_threadpool(dataset_shape, owner, spec)
    check_budgets(spec, Limits.of(get_settings()), shape=shape)
    return spec


# The body is read by read_spec (any Content-Type), so its schema is declared by hand; the
# component itself is added in api.main.
SPEC_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ExperimentCreate"}}
        },
    }
}


IDEMPOTENCY_KEY_MAX = 200
SUBMIT_OPENAPI = {
    **SPEC_BODY,
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "the same key and body within IDEMPOTENCY_TTL_S return the same "
            "experiment; the same key with another body is a 409",
            "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX},
        }
    ],
}


@router.post(
    "",
    status_code=202,
    response_model=ExperimentRead,
    openapi_extra=SUBMIT_OPENAPI,
    responses={400: {}, 409: {}, 413: {}, 422: {}},
)
async def create_experiment(request: Request) -> FastJSON:
    """The busiest write, kept lean like the read: auth, body and header without the
    dependency machinery, then one threadpool hop for the database and the broker."""
    owner = await current_owner(request)
    spec = await read_spec(request, owner)
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and len(idempotency_key) > IDEMPOTENCY_KEY_MAX:
        raise invalid_field(
            f"the Idempotency-Key header is over {IDEMPOTENCY_KEY_MAX} characters",
            "Idempotency-Key",
            "too long",
            "string_too_long",
        )
    return await run_in_threadpool(submit, owner, spec, idempotency_key, request_id.get())


def submit(
    owner: str, spec: ExperimentCreate, idempotency_key: str | None, rid: str | None
) -> FastJSON:
    """Store a queued experiment (or replay the one this Idempotency-Key made), then ring the
    broker's bell. Core on one connection: the ORM's unit of work is most of a write's cost."""
    normalised = spec.model_dump(mode="json")
    digest = hashlib.sha256(orjson.dumps(normalised, option=orjson.OPT_SORT_KEYS)).hexdigest()
    cap = get_settings().max_active_per_owner
    now = utcnow()
    row = SimpleNamespace(
        **queued_values(
            owner,
            normalised,
            name=spec.name,
            tags=spec.tags,
            request_id=rid,
            idempotency_key=idempotency_key,
            request_hash=digest,
        )
    )
    existing = None
    if idempotency_key is not None:
        with get_read_engine().connect() as conn:  # no BEGIN, no ROLLBACK: one round trip
            existing = _by_key(conn, owner, idempotency_key)
        ttl = timedelta(seconds=get_settings().idempotency_ttl_s)
        if existing is not None and as_utc(existing.created_at) > now - ttl:
            return _replay(existing, digest)  # a replay is judged by its body, not by DNS now
    # The webhook URL's name is resolved here: in the threadpool, with no connection held.
    check_notify(spec, get_settings().webhook_allow_private)
    with get_engine().connect() as conn:
        if existing is not None:  # expired: the key is free for a new request
            conn.execute(
                update(EXPERIMENTS)
                .where(EXPERIMENTS.c.id == existing.id)
                .values(idempotency_key=None)
            )
            conn.commit()
        try:
            if not submit_queued(conn, vars(row), cap):  # committed; on PostgreSQL one trip
                raise over_cap(conn, owner, 1, cap)
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key won; without a key the
            # conflict is not one a replay explains.
            conn.rollback()
            if idempotency_key is None:
                raise
            existing = _by_key(conn, owner, idempotency_key)
            if existing is None:
                raise
            return _replay(existing, digest)
    try:
        enqueue(row.id)
    except Exception:  # the row is safe; the reconciler sends it once the broker is back
        log.warning("could not enqueue %s now; the reconciler will", row.id, exc_info=True)
    return FastJSON(
        experiment_view(row), status_code=202, headers={"Location": f"/v1/experiments/{row.id}"}
    )


def _by_key(conn: Connection, owner: str, idempotency_key: str | None) -> Row | None:
    return conn.execute(
        select(EXPERIMENTS).where(
            EXPERIMENTS.c.owner == owner,
            EXPERIMENTS.c.idempotency_key == idempotency_key,
        )
    ).first()


def _replay(existing: Experiment | Row, digest: str) -> FastJSON:
    if existing.request_hash != digest:
        raise Problem(
            409,
            "Idempotency-Key reused",
            "this Idempotency-Key was used with another body",
            "idempotency-conflict",
        )
    return FastJSON(
        experiment_view(existing),
        status_code=202,
        headers={"Location": f"/v1/experiments/{existing.id}"},
    )


@router.get("", response_model=ExperimentPage)
def list_experiments(
    owner: Owner,
    session: SessionDep,
    status: Annotated[
        list[StatusName] | None, Query(description="one or more; any of them matches")
    ] = None,
    tag: Annotated[str | None, Query(max_length=50)] = None,
    sweep_id: Annotated[str | None, Query(max_length=36)] = None,
    verdict: Annotated[Verdict | None, Query(description="the diagnosis' verdict")] = None,
    cell: Annotated[Cell | None, Query(description="model.cell")] = None,
    task: Annotated[
        str | None, Query(max_length=40, pattern="^[a-z_]+$", description="task.name")
    ] = None,
    name: Annotated[
        str | None,
        Query(max_length=200, pattern=NO_NUL, description="part of the name, any case"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> FastJSON:
    """The owner's experiments, newest first, a page at a time (`next_cursor`). Filters
    combine: status, tag, sweep, verdict, cell, task, and `name` (a substring, any case)."""
    q = select(Experiment).where(Experiment.owner == owner)
    if status:
        q = q.where(Experiment.status.in_(status))
    if sweep_id:
        q = q.where(Experiment.sweep_id == sweep_id)
    if verdict:
        q = q.where(Experiment.diagnosis["verdict"].as_string() == verdict)
    if cell:
        q = q.where(Experiment.spec[("model", "cell")].as_string() == cell)
    if task:
        q = q.where(Experiment.spec[("task", "name")].as_string() == task)
    if name:
        q = q.where(Experiment.name.icontains(name, autoescape=True))
    if cursor:
        created, row_id = decode_cursor(cursor)
        q = q.where(
            or_(
                Experiment.created_at < created,
                and_(Experiment.created_at == created, Experiment.id < row_id),
            )
        )
    q = q.order_by(Experiment.created_at.desc(), Experiment.id.desc())
    if tag:
        # Tags are a JSON list: filter in Python, fetching in pages until the page is full.
        rows: list[Experiment] = []
        offset = 0
        while len(rows) <= limit:
            batch = session.scalars(q.offset(offset).limit(500)).all()
            rows += [r for r in batch if tag in (r.tags or [])]
            if len(batch) < 500:
                break
            offset += 500
    else:
        rows = list(session.scalars(q.limit(limit + 1)).all())
    page, more = rows[:limit], len(rows) > limit
    return FastJSON(
        {
            "items": [experiment_view(r) for r in page],
            "next_cursor": encode_cursor(page[-1]) if more and page else None,
        }
    )


def _experiment_row(experiment_id: str) -> Row | None:
    if len(experiment_id) > 36:
        return None
    with get_read_engine().connect() as conn:
        return conn.execute(select(EXPERIMENTS).where(EXPERIMENTS.c.id == experiment_id)).first()


async def _fast_row(request: Request, experiment_id: str) -> Any:
    """The row by the event loop's own async reader where the app has one (PostgreSQL, under
    a server that ran the lifespan on this loop), else UNAVAILABLE."""
    reader = getattr(request.app.state, "fast_reader", None)
    if reader is None or len(experiment_id) > 36 or reader.loop is not asyncio.get_running_loop():
        return UNAVAILABLE
    return await reader.experiment(experiment_id)


@router.get("/{experiment_id}", response_model=ExperimentRead)
async def read_experiment(experiment_id: str, request: Request) -> FastJSON:
    """The hottest route (clients poll it), kept lean: auth without the dependency machinery,
    one query: on PostgreSQL by the loop's async reader (core/fast_read.py), else (SQLite, or
    that reader unable to answer) in the threadpool, never blocking the event loop: a slow
    read there would stall every other request."""
    owner = await current_owner(request)
    row = await _fast_row(request, experiment_id)
    if row is UNAVAILABLE:
        row = await run_in_threadpool(_experiment_row, experiment_id)
    if row is None or row.owner != owner:
        raise Problem(404, "Not found", f"no experiment {experiment_id!r}", "not-found")
    return FastJSON(experiment_view(row))


@router.get("/{experiment_id}/events", response_model=EventsRead)
def read_events(
    owner: Owner,
    experiment_id: str,
    session: SessionDep,
    kind: EventKind | None = None,
) -> FastJSON:
    """NaN/Inf events (with where the first non-finite value appeared), halts, retries."""
    row = get_experiment(session, experiment_id, owner)
    q = select(Event).where(Event.experiment_id == row.id).order_by(Event.id)
    if kind:
        q = q.where(Event.kind == kind)
    items = [
        {
            "step": e.step,
            "kind": e.kind,
            "detail": e.detail,
            "attempt": e.attempt,
            "created_at": as_utc(e.created_at),
        }
        for e in session.scalars(q)
    ]
    return FastJSON({"items": items})


@router.post("/{experiment_id}/cancel", status_code=202, response_model=ExperimentRead)
def cancel_experiment(owner: Owner, experiment_id: str, session: SessionDep) -> FastJSON:
    """A queued experiment is cancelled at once; a running one stops within CANCEL_POLL_S
    and a step."""
    row = get_experiment(session, experiment_id, owner)
    which = Experiment.id == row.id
    cancelled = bool(cancel_queued(session, which, utcnow())) or (
        request_cancel_running(session, which) == 1
    )
    session.commit()
    session.refresh(row)
    if not cancelled:
        raise Problem(
            409,
            "Already finished",
            f"experiment is {row.status}",
            "finished",
            status_value=row.status,
        )
    return FastJSON(experiment_view(row), status_code=202)


@router.get("/{experiment_id}/webhooks")
def read_webhooks(owner: Owner, experiment_id: str, session: SessionDep) -> FastJSON:
    """The webhook deliveries of this experiment, oldest first: event, status (`pending`,
    `delivered`, `failed`), attempts with each try's status code or error, the body sent."""
    row = get_experiment(session, experiment_id, owner)
    q = (
        select(WebhookDelivery)
        .where(WebhookDelivery.experiment_id == row.id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    )
    items = [
        {
            "id": d.id,
            "event": d.event,
            "url": d.url,
            "status": d.status,
            "attempt": d.attempt,
            "attempts": d.attempts,
            "log": d.log,
            "last_status_code": d.last_status_code,
            "last_error": d.last_error,
            "next_attempt_at": as_utc(d.next_attempt_at) if d.status == "pending" else None,
            "created_at": as_utc(d.created_at),
            "delivered_at": as_utc(d.delivered_at),
            "payload": d.payload,
        }
        for d in session.scalars(q)
    ]
    return FastJSON({"items": items})
