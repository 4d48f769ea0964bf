"""/v1/sweeps: a grid of experiments, fanned out over the workers, compared in one answer."""

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from api.deps import Owner, SessionDep, current_owner
from api.guard import read_object
from api.pagination import decode_cursor, encode_cursor
from api.responses import FastJSON
from api.serializers import sweep_summary, sweep_view
from core.budgets import Limits
from core.datasets import check_task
from core.db import get_sessionmaker
from core.lifecycle import (
    cancel_queued,
    check_active_cap,
    lock_owner,
    queued_values,
    request_cancel_running,
)
from core.logs import request_id
from core.owned import get_sweep, owner_sweeps, status_counts, sweep_experiments
from core.presets import PRESETS, preset_info
from core.queue import enqueue
from core.settings import get_settings
from core.spec import ExperimentCreate, SweepCreate, TaskShape
from core.sweeps import expand, resolve
from core.tables import Experiment, Sweep, utcnow
from core.webhooks import check_notify

log = logging.getLogger("gradlab.api")
router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])


@router.get("/presets")
def list_presets(owner: Owner) -> FastJSON:
    """The built-in studies: what each studies, its grid and seeds, how many runs, and about
    how long they take (from the cost model; an order of magnitude)."""
    max_cost = get_settings().max_cost
    return FastJSON({name: preset_info(name, max_cost) for name in PRESETS})


@router.get("")
def list_sweeps(
    owner: Owner,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> FastJSON:
    """The owner's sweeps, newest first, a page at a time (`next_cursor`): each with its
    name, preset, grid, status and experiments per status (the points are in
    GET /v1/sweeps/{id})."""
    after = decode_cursor(cursor) if cursor else None
    rows = owner_sweeps(session, owner, after, limit + 1)
    page, more = rows[:limit], len(rows) > limit
    counts = status_counts(session, [s.id for s in page])
    return FastJSON(
        {
            "items": [sweep_summary(s, counts[s.id]) for s in page],
            "next_cursor": encode_cursor(page[-1]) if more and page else None,
        }
    )


SWEEP_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SweepCreate"}}},
    }
}


@router.post(
    "", status_code=202, responses={404: {}, 413: {}, 422: {}, 429: {}}, openapi_extra=SWEEP_BODY
)
async def create_sweep(request: Request) -> FastJSON:
    """Expand, validate every point, then queue them all (or nothing). The body is read by
    api.guard.read_object (size, depth, NUL and NaN checked before anything is stored)."""
    owner = await current_owner(request)
    req = SweepCreate.model_validate(await read_object(request))
    return await run_in_threadpool(submit_sweep, owner, req, request_id.get())


def submit_sweep(owner: str, req: SweepCreate, rid: str | None) -> FastJSON:
    req = resolve(req)
    shapes: dict[str, TaskShape | None] = {}  # one lookup per dataset, not per point

    def shape_of(spec: ExperimentCreate) -> TaskShape | None:
        key = spec.task.model_dump_json() if spec.task.name == "dataset" else ""
        if key not in shapes:
            with get_sessionmaker()() as session:
                shapes[key] = check_task(session, owner, spec)
        return shapes[key]

    points = expand(req, Limits.of(get_settings()), shape_of)
    checked: set[tuple] = set()  # a URL is resolved once a sweep, not once a point
    for params, spec in points:
        if spec.notify is None:
            continue
        key = (spec.notify.url, tuple(spec.notify.events), "temporal" in spec.instrument.on)
        if key not in checked:
            check_notify(spec, get_settings().webhook_allow_private, params)
            checked.add(key)
    seeds = req.seeds or [0]
    with get_sessionmaker()() as session:
        # The cap check and the inserts under the owner's lock: concurrent sweeps of one owner
        # are counted one after the other, never together.
        lock_owner(session, owner)
        check_active_cap(session, owner, len(points), get_settings().max_active_per_owner)
        sweep = Sweep(
            name=req.name,
            owner=owner,
            request={"preset": req.preset, "base": req.base, "grid": req.grid, "seeds": seeds},
        )
        session.add(sweep)
        session.flush()
        rows = [
            Experiment(
                **queued_values(
                    owner,
                    spec.model_dump(mode="json"),
                    name=spec.name or req.name,
                    tags=spec.tags,
                    request_id=rid,
                    sweep_id=sweep.id,
                    sweep_params=params,
                )
            )
            for params, spec in points
        ]
        session.add_all(rows)
        session.commit()
        for row in rows:
            try:
                enqueue(row.id)
            except Exception:  # the rows are safe; the reconciler sends them later
                log.warning("could not enqueue %s now", row.id, exc_info=True)
        return FastJSON(
            sweep_view(sweep, sweep_experiments(session, sweep)),
            status_code=202,
            headers={"Location": f"/v1/sweeps/{sweep.id}"},
        )


@router.get("/{sweep_id}")
def read_sweep(owner: Owner, sweep_id: str, session: SessionDep) -> FastJSON:
    """Progress (counts per status) and, per grid point aggregated over seeds, the
    effectiveness measures, a ranking, and each factor's effect."""
    sweep = get_sweep(session, sweep_id, owner)
    return FastJSON(sweep_view(sweep, sweep_experiments(session, sweep)))


@router.post("/{sweep_id}/cancel", status_code=202)
def cancel_sweep(owner: Owner, sweep_id: str, session: SessionDep) -> FastJSON:
    """Cancels what has not finished: queued at once, running within CANCEL_POLL_S and a step."""
    sweep = get_sweep(session, sweep_id, owner)
    which = Experiment.sweep_id == sweep.id
    cancel_queued(session, which, utcnow())
    request_cancel_running(session, which)
    session.commit()
    return FastJSON(sweep_view(sweep, sweep_experiments(session, sweep)), status_code=202)
