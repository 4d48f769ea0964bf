"""External runs, fed by `gradlab.watch` from a user's own loop: create one, append its
batches (idempotent by sequence number), beat its heartbeat, finish it. Once made it is an
experiment like any other: read, plotted, reported, streamed and exported by the same routes."""

from types import SimpleNamespace

from fastapi import APIRouter, Request
from sqlalchemy.exc import IntegrityError

from api.deps import Owner, SessionDep
from api.responses import FastJSON
from api.schemas import BatchStored, ExperimentRead, HeartbeatRead
from api.serializers import experiment_view
from core import lifecycle, traces
from core.diagnosis import diagnose
from core.errors import Problem, invalid_field
from core.external import (
    MAX_BATCH_BYTES,
    SOURCE,
    BatchUpload,
    ExternalFinish,
    ExternalRunCreate,
    check_summary,
    decode_series,
    external_spec,
    with_evidence,
)
from core.logs import request_id
from core.owned import get_experiment
from core.settings import get_settings
from core.tables import Event, Experiment
from core.webhooks import add_running_deliveries, check_notify

router = APIRouter(prefix="/v1/experiments", tags=["external runs"])


def _external(session: SessionDep, experiment_id: str, owner: str) -> Experiment:
    row = get_experiment(session, experiment_id, owner)
    if row.source != SOURCE:
        raise Problem(
            409,
            "Not an external run",
            "only a run made with POST /v1/experiments/external takes batches from a client",
            "not-external",
        )
    return row


def _not_running(row: Experiment) -> Problem:
    return Problem(
        409, "Already finished", f"experiment is {row.status}", "finished", status_value=row.status
    )


def _check_size(request: Request) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BATCH_BYTES:
        raise Problem(
            413, "Body too large", f"the body is over {MAX_BATCH_BYTES} bytes", "too-large"
        )


@router.post("/external", status_code=201, response_model=ExperimentRead, responses={422: {}})
def create_external(owner: Owner, body: ExternalRunCreate, session: SessionDep) -> FastJSON:
    """A run of the client's own loop: `running` from now, until the client finishes it or
    stops beating (then `failed`, `client_lost`; it is never re-run)."""
    if body.notify is not None:
        # watch always measures the profile that the `vanishing` event reads
        watched = SimpleNamespace(notify=body.notify, instrument=SimpleNamespace(on=["temporal"]))
        check_notify(watched, get_settings().webhook_allow_private)  # type: ignore[arg-type]
    client = body.client or {}
    row = lifecycle.start_external(
        session,
        owner,
        lifecycle.json_safe(external_spec(body)),  # no NaN in a JSON column
        name=body.name,
        tags=body.tags,
        total_steps=body.total_steps,
        request_id=request_id.get(),
        client=(client.get("host") or "external")[:200],
        cap=get_settings().max_active_per_owner,
    )
    return FastJSON(
        experiment_view(row), status_code=201, headers={"Location": f"/v1/experiments/{row.id}"}
    )


@router.post(
    "/{experiment_id}/batches",
    response_model=BatchStored,
    responses={404: {}, 409: {}, 413: {}, 422: {}},
)
def append_batch(
    owner: Owner, experiment_id: str, body: BatchUpload, session: SessionDep, request: Request
) -> FastJSON:
    """Store batch `seq`: its series chunks (the packed trace format), its events and the
    progress, in one transaction; counts as a heartbeat. A `seq` already stored answers
    `stored: false` and changes nothing, so a client may retry an upload it is unsure of."""
    _check_size(request)
    row = _external(session, experiment_id, owner)
    if traces.batch_stored(session, row.id, body.seq):
        return FastJSON({"seq": body.seq, "stored": False})
    if row.status != "running":
        raise _not_running(row)
    decoded = [decode_series(i, s) for i, s in enumerate(body.series)]
    attempt = row.attempt
    chunks = [
        traces.packed_chunk_row(row.id, attempt, s.name, steps, s.width, raw_steps, raw_values)
        for s, (steps, raw_steps, raw_values) in zip(body.series, decoded, strict=True)
    ]
    spec = row.spec
    if not lifecycle.record_progress(session, row.id, attempt, body.step):
        session.refresh(row)
        raise _not_running(row)
    traces.add_batch(session, row.id, body.seq, chunks)
    events = [lifecycle.json_safe(e.model_dump()) for e in body.events]
    for ev in events:
        session.add(Event(experiment_id=row.id, attempt=attempt, **ev))
    if spec.get("notify"):
        add_running_deliveries(session, row.id, attempt, events, spec)
    try:
        session.commit()
    except IntegrityError:  # the same seq, committed meanwhile by a concurrent retry
        session.rollback()
        return FastJSON({"seq": body.seq, "stored": False})
    return FastJSON({"seq": body.seq, "stored": True})


@router.post(
    "/{experiment_id}/heartbeat", response_model=HeartbeatRead, responses={404: {}, 409: {}}
)
def beat(owner: Owner, experiment_id: str, session: SessionDep) -> FastJSON:
    """The client is alive; the answer says whether a cancel was asked for."""
    row = _external(session, experiment_id, owner)
    ours, cancel = lifecycle.heartbeat(session, row.id, row.attempt)
    if not ours:
        session.refresh(row)
        raise _not_running(row)
    return FastJSON({"status": "running", "cancel_requested": cancel})


@router.post(
    "/{experiment_id}/finish",
    response_model=ExperimentRead,
    responses={404: {}, 409: {}, 422: {}},
)
def finish_external(
    owner: Owner, experiment_id: str, body: ExternalFinish, session: SessionDep
) -> FastJSON:
    """The final status, with the client's summary; the service adds the profiles' evidence
    and the diagnosis (core.diagnosis, as for its own runs). Finishing again with the same
    status answers the run as it is."""
    row = _external(session, experiment_id, owner)
    if row.status != "running":
        if row.status == body.status:
            return FastJSON(experiment_view(row))
        raise _not_running(row)
    check_summary(body.summary)
    summary = with_evidence(body.summary)
    try:
        diagnosis = diagnose(summary, row.spec, body.status)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
        reason = f"the diagnosis cannot read this summary: {exc}"
        raise invalid_field(
            reason, "summary", "not a summary the diagnosis reads", "value"
        ) from exc
    done = lifecycle.finish(
        session,
        row.id,
        row.attempt,
        body.status,
        summary=summary,
        diagnosis=diagnosis,
        error=lifecycle.json_safe(body.error),
        progress_step=body.step,
    )
    session.refresh(row)
    if not done and row.status != body.status:
        raise _not_running(row)
    return FastJSON(experiment_view(row))
