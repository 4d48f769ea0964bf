"""/v1/experiments: submit, list, read, traces, events, cancel."""

import base64
import binascii
import hashlib
import logging
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import Owner, current_owner
from api.deps import Thinning, get_session
from api.responses import FastJSON
from api.schemas import EventsRead, ExperimentPage, ExperimentRead
from api.serializers import experiment_view
from core.db import get_engine, get_read_engine
from core.errors import Problem, field_error, invalid_field
from core.logs import request_id
from core.queue import enqueue
from core.settings import get_settings
from core.spec import ExperimentCreate, estimated_cost
from core.tables import Event, Experiment, SeriesChunk, WebhookDelivery, as_utc, new_id, utcnow
from core.traces import concat, unpack
from core.webhooks import terminal_delivery, url_refused

log = logging.getLogger("gradlab.api")
router = APIRouter(prefix="/v1/experiments", tags=["experiments"])
EXPERIMENT_TABLE = Experiment.__table__
UNSET_AT_SUBMIT = (
    "sweep_id",
    "sweep_params",
    "worker",
    "started_at",
    "heartbeat_at",
    "finished_at",
    "summary",
    "diagnosis",
    "error",
)

MAX_BODY_BYTES = 64 * 1024
SessionDep = Annotated[Session, Depends(get_session)]
StatusName = Literal["queued", "running", "succeeded", "diverged", "failed", "cancelled"]


def get_experiment(session: Session, experiment_id: str, owner: str) -> Experiment:
    """The owner's experiment; another owner's id is 404, as if it did not exist."""
    row = session.get(Experiment, experiment_id) if len(experiment_id) <= 36 else None
    if row is None or row.owner != owner:
        raise Problem(404, "Not found", f"no experiment {experiment_id!r}", "not-found")
    return row


async def read_spec(request: Request) -> ExperimentCreate:
    """The body as a spec, whatever its Content-Type (`curl -d '{}'` sends a form type)."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise Problem(
            413, "Body too large", f"the body is over {MAX_BODY_BYTES} bytes", "too-large"
        )
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "Malformed JSON", f"the body is not valid JSON: {exc}", "json") from exc
    if not isinstance(data, dict):
        raise invalid_field("the body must be a JSON object", None, "expected an object", "type")
    spec = ExperimentCreate.model_validate(data)  # ValidationError -> 422 naming the fields
    cost, limit = estimated_cost(spec), get_settings().max_cost
    if cost > limit:
        raise Problem(
            422,
            "Over the compute budget",
            f"estimated cost {cost:.3g} (steps x batch x T x hidden^2 x layers x gates) is over "
            f"the limit {limit:.3g}",
            "budget",
            estimate=cost,
            limit=limit,
            errors=[field_error("train.steps", "over the compute budget", "budget")],
        )
    return spec


def check_notify(spec: ExperimentCreate, point: dict[str, Any] | None = None) -> None:
    """422 naming `notify.url` when the webhook URL may not be called (a loopback, private or
    reserved address, or a name that does not resolve), unless WEBHOOK_ALLOW_PRIVATE; naming
    `notify.events` when `vanishing` is asked for without the temporal instrument."""
    if spec.notify is None:
        return
    extra = {} if point is None else {"point": point}
    if "vanishing" in spec.notify.events and "temporal" not in spec.instrument.on:
        reason = "the 'vanishing' event is read from the temporal profile: add 'temporal' to on"
        raise invalid_field(reason, "notify.events", reason, "value", **extra)
    reason = url_refused(spec.notify.url, get_settings().webhook_allow_private)
    if reason is not None:
        raise invalid_field(reason, "notify.url", reason, "url", "Webhook URL refused", **extra)


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
    spec = await read_spec(request)
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
        id=new_id(),
        status="queued",
        name=spec.name,
        tags=spec.tags,
        owner=owner,
        spec=normalised,
        idempotency_key=idempotency_key,
        request_hash=digest,
        request_id=rid,
        attempt=0,
        cancel_requested=False,
        progress_step=0,
        total_steps=spec.train.steps,
        created_at=now,
        enqueued_at=now,
        **dict.fromkeys(UNSET_AT_SUBMIT),
    )
    existing = None
    if idempotency_key is not None:
        with get_engine().connect() as conn:
            existing = _by_key(conn, owner, idempotency_key)
        ttl = timedelta(seconds=get_settings().idempotency_ttl_s)
        if existing is not None and as_utc(existing.created_at) > now - ttl:
            return _replay(existing, digest)  # a replay is judged by its body, not by DNS now
    # The webhook URL's name is resolved here: in the threadpool, with no connection held.
    check_notify(spec)
    with get_engine().connect() as conn:
        if existing is not None:  # expired: the key is free for a new request
            conn.execute(
                update(EXPERIMENT_TABLE)
                .where(EXPERIMENT_TABLE.c.id == existing.id)
                .values(idempotency_key=None)
            )
        try:
            stored = conn.execute(INSERT_UNDER_CAP, {**vars(row), "cap_offset": cap - 1})
            if stored.first() is None:
                conn.rollback()
                raise over_cap(conn, owner, 1, cap)
            conn.commit()
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
        select(EXPERIMENT_TABLE).where(
            EXPERIMENT_TABLE.c.owner == owner,
            EXPERIMENT_TABLE.c.idempotency_key == idempotency_key,
        )
    ).first()


def active_rows(owner: Any) -> Select:
    """The owner's queued or running experiments, in the (owner, status) index."""
    return select(EXPERIMENT_TABLE.c.id).where(
        EXPERIMENT_TABLE.c.owner == owner, EXPERIMENT_TABLE.c.status.in_(("queued", "running"))
    )


# The row goes in only when the owner has no cap-th active experiment yet: the cap check and
# the insert in one statement, one round trip. It asks for the row at OFFSET cap - 1, an index
# walk that stops there, never a count.
_OWNER = bindparam("owner", type_=EXPERIMENT_TABLE.c.owner.type)
INSERT_UNDER_CAP = (
    insert(EXPERIMENT_TABLE)
    .from_select(
        [c.name for c in EXPERIMENT_TABLE.c],
        select(
            *(
                _OWNER if c.name == "owner" else bindparam(c.name, type_=c.type)
                for c in EXPERIMENT_TABLE.c
            )
        ).where(~exists(active_rows(_OWNER).offset(bindparam("cap_offset")).limit(1))),
    )
    .returning(EXPERIMENT_TABLE.c.id)
)  # no row back: over the cap (rowcount is -1 on psycopg)


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


def check_active_cap(session: Session, owner: str, adding: int) -> None:
    """429 when the owner's queued + running experiments would pass the cap."""
    cap = get_settings().max_active_per_owner
    # Is there a (cap - adding + 1)-th active row? An index walk that stops there, not a count.
    if session.execute(active_rows(owner).offset(max(cap - adding, 0)).limit(1)).first():
        raise over_cap(session, owner, adding, cap)


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


def _encode_cursor(row: Experiment) -> str:
    return base64.urlsafe_b64encode(
        f"{as_utc(row.created_at).isoformat()}|{row.id}".encode()
    ).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), row_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise Problem(
            400,
            "Bad cursor",
            "the cursor is not one this API issued",
            "cursor",
            errors=[field_error("cursor", "invalid", "value")],
        ) from exc


@router.get("", response_model=ExperimentPage)
def list_experiments(
    owner: Owner,
    session: SessionDep,
    status: StatusName | None = None,
    tag: Annotated[str | None, Query(max_length=50)] = None,
    sweep_id: Annotated[str | None, Query(max_length=36)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> FastJSON:
    q = select(Experiment).where(Experiment.owner == owner)
    if status:
        q = q.where(Experiment.status == status)
    if sweep_id:
        q = q.where(Experiment.sweep_id == sweep_id)
    if cursor:
        created, row_id = _decode_cursor(cursor)
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
            "next_cursor": _encode_cursor(page[-1]) if more and page else None,
        }
    )


@router.get("/{experiment_id}", response_model=ExperimentRead)
async def read_experiment(experiment_id: str, request: Request) -> FastJSON:
    """The hottest route (clients poll it), kept lean: auth without the dependency machinery,
    one Core query on the event loop (a primary-key read, shorter than a threadpool hop)."""
    owner = await current_owner(request)
    row = None
    if len(experiment_id) <= 36:
        with get_read_engine().connect() as conn:
            row = conn.execute(
                select(EXPERIMENT_TABLE).where(EXPERIMENT_TABLE.c.id == experiment_id)
            ).first()
    if row is None or row.owner != owner:
        raise Problem(404, "Not found", f"no experiment {experiment_id!r}", "not-found")
    return FastJSON(experiment_view(row))


def load_series(
    session: Session, row: Experiment, names: list[str]
) -> dict[str, list[SeriesChunk]]:
    chunks = session.scalars(
        select(SeriesChunk).where(
            SeriesChunk.experiment_id == row.id,
            SeriesChunk.attempt == row.attempt,
            SeriesChunk.name.in_(names),
        )
    ).all()
    out: dict[str, list[SeriesChunk]] = {n: [] for n in names}
    for c in chunks:
        out[c.name].append(c)
    return out


def load_prefixed(session: Session, row: Experiment, prefix: str) -> dict[str, list[SeriesChunk]]:
    chunks = session.scalars(
        select(SeriesChunk).where(
            SeriesChunk.experiment_id == row.id,
            SeriesChunk.attempt == row.attempt,
            SeriesChunk.name.startswith(prefix, autoescape=True),
        )
    ).all()
    out: dict[str, list[SeriesChunk]] = {}
    for c in chunks:
        out.setdefault(c.name, []).append(c)
    return out


@router.get("/{experiment_id}/metrics")
def read_metrics(
    owner: Owner, experiment_id: str, session: SessionDep, thin: Annotated[Thinning, Depends()]
) -> FastJSON:
    """Training loss (and accuracy) per step; validation loss (and accuracy) where measured;
    the learning rate at the instrumented steps."""
    row = get_experiment(session, experiment_id, owner)
    series = load_series(session, row, ["loss", "accuracy", "val_loss", "val_accuracy", "lr"])
    steps, loss = concat(series["loss"])
    idx = thin.indices(steps)
    out: dict[str, Any] = {"steps": [steps[i] for i in idx], "loss": [loss[i] for i in idx]}
    if series["accuracy"]:
        _, acc = concat(series["accuracy"])
        out["accuracy"] = [acc[i] for i in idx]
    vsteps, vloss = thin.apply(*concat(series["val_loss"]))
    out["validation"] = {"steps": vsteps, "loss": vloss}
    if series["val_accuracy"]:
        out["validation"]["accuracy"] = thin.apply(*concat(series["val_accuracy"]))[1]
    lr_steps, lr = thin.apply(*concat(series["lr"]))
    out["lr"] = {"steps": lr_steps, "values": lr}
    return FastJSON(out)


@router.get("/{experiment_id}/gradients")
def read_gradients(
    owner: Owner, experiment_id: str, session: SessionDep, thin: Annotated[Thinning, Depends()]
) -> FastJSON:
    """Gradients at the instrumented steps, thinned by `every`, `max_points`, `from_step`,
    `to_step` (applied to each series' own steps):

    - `steps`, `parameters` (name -> gradient L2 norm before clipping, one per step),
      `global_norm.before_clip` and `global_norm.after_clip` (aligned with `steps`; null where
      the step was not clipped-and-applied, e.g. a non-finite step that was skipped).
    - `temporal`: `{"quantity": "grad_norm_hidden", "layers": [{"layer", "steps", "values"}]}`
      where `values[i][t]` is ||dL/dh_t|| of that layer at its i-th instrumented step: the
      total derivative, every path through later time steps included (seq_len values a row).
      `layers` is empty when the temporal instrument was off."""
    row = get_experiment(session, experiment_id, owner)
    series = load_series(session, row, ["grad_norm_total", "clip/after"])
    steps, norms = concat(series["grad_norm_total"])
    idx = thin.indices(steps)
    params = {
        name.removeprefix("grad/"): [vals[i] for i in idx]
        for name, chunks in sorted(load_prefixed(session, row, "grad/").items())
        for vals in [concat(chunks)[1]]
    }
    after = dict(zip(*concat(series["clip/after"]), strict=True))
    layers = []
    for name, chunks in load_prefixed(session, row, "temporal/").items():
        t_steps, t_rows = _rows(chunks)
        keep = thin.indices(t_steps)
        layers.append(
            {
                "layer": int(name.removeprefix("temporal/")),
                "steps": [t_steps[i] for i in keep],
                "values": [t_rows[i] for i in keep],
            }
        )
    return FastJSON(
        {
            "steps": [steps[i] for i in idx],
            "parameters": params,
            "global_norm": {
                "before_clip": [norms[i] for i in idx],
                "after_clip": [after.get(steps[i]) for i in idx],
            },
            "temporal": {
                "quantity": "grad_norm_hidden",
                "layers": sorted(layers, key=lambda d: d["layer"]),
            },
        }
    )


def _rows(chunks: list[SeriesChunk]) -> tuple[list[int], list[list[float]]]:
    """A vector series (one row of `width` values per step) from its chunks, in step order."""
    steps: list[int] = []
    values: list[list[float]] = []
    for c in sorted(chunks, key=lambda c: c.first_step):
        s, v = unpack(c)
        steps.extend(s)
        values.extend(v)
    return steps, values


def _thinned(thin: Thinning, chunks: list[SeriesChunk]) -> dict[str, list]:
    steps, values = thin.apply(*concat(chunks))
    return {"steps": steps, "values": values}


@router.get("/{experiment_id}/instruments")
def read_instruments(
    owner: Owner, experiment_id: str, session: SessionDep, thin: Annotated[Thinning, Depends()]
) -> FastJSON:
    """The other instruments' series, each `{"steps": [...], "values": [...]}` and thinned by
    `every`, `max_points`, `from_step`, `to_step`; a group is `{}` when its instrument was off.

    - `spectrum[layer][block]` with blocks `hh` (rnn), `i`,`f`,`g`,`o` (lstm), `r`,`z`,`n`
      (gru): `sigma_max` (largest singular value of that block of W_hh) and `radius` (its
      spectral radius), at instrumented steps.
    - `saturation[layer]`: fractions over (time step, example, unit) at instrumented steps:
      `tanh` (|h| > 0.99), `sigmoid` (h < 0.01 or > 0.99), `dead_relu` (units zero for every
      example at every time step), or per gate for lstm (`i`,`f`,`g`,`o`) and gru (`r`,`z`,`n`).
    - `update_ratio[parameter]`: ||W_after - W_before|| / ||W_before|| across one optimiser
      step; `weight_norm[parameter]`: ||W|| after it (instrumented steps).
    - `clipping`: `fired` (1 or 0 at every applied step), `after_clip` (global gradient norm
      after clipping, instrumented steps), `fired_fraction` (over all applied steps, unthinned).
    """
    row = get_experiment(session, experiment_id, owner)
    out: dict[str, Any] = {"spectrum": {}, "saturation": {}, "update_ratio": {}, "weight_norm": {}}
    for name, chunks in sorted(load_prefixed(session, row, "spectrum/").items()):
        layer, block, quantity = name.split("/")[1:]
        out["spectrum"].setdefault(layer, {}).setdefault(block, {})[quantity] = _thinned(
            thin, chunks
        )
    for name, chunks in sorted(load_prefixed(session, row, "saturation/").items()):
        layer, kind = name.split("/")[1:]
        out["saturation"].setdefault(layer, {})[kind] = _thinned(thin, chunks)
    for group in ("update_ratio", "weight_norm"):
        for name, chunks in sorted(load_prefixed(session, row, f"{group}/").items()):
            out[group][name.removeprefix(f"{group}/")] = _thinned(thin, chunks)
    clip = load_prefixed(session, row, "clip/")
    out["clipping"] = {}
    if clip:
        fired = concat(clip.get("clip/fired", []))[1]
        out["clipping"] = {
            "fired": _thinned(thin, clip.get("clip/fired", [])),
            "after_clip": _thinned(thin, clip.get("clip/after", [])),
            "fired_fraction": sum(fired) / len(fired) if fired else None,
        }
    return FastJSON(out)


@router.get("/{experiment_id}/events", response_model=EventsRead)
def read_events(
    owner: Owner,
    experiment_id: str,
    session: SessionDep,
    kind: Annotated[str | None, Query(max_length=40)] = None,
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


@router.post("/{experiment_id}/cancel", status_code=202, response_model=ExperimentRead)
def cancel_experiment(owner: Owner, experiment_id: str, session: SessionDep) -> FastJSON:
    """A queued experiment is cancelled at once; a running one stops within CANCEL_POLL_S
    and a step."""
    row = get_experiment(session, experiment_id, owner)
    cancelled = bool(cancel_queued(session, Experiment.id == row.id, utcnow())) or (
        session.execute(
            update(Experiment)
            .where(Experiment.id == row.id, Experiment.status == "running")
            .values(cancel_requested=True)
        ).rowcount
        == 1
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
