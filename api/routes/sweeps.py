"""/v1/sweeps: a grid of experiments, fanned out over the workers, compared in one answer."""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.auth import Owner
from api.deps import get_session
from api.responses import FastJSON
from api.routes.experiments import cancel_queued, check_active_cap, check_notify
from api.serializers import experiment_view
from core.errors import Problem
from core.logs import request_id
from core.presets import PRESETS
from core.queue import enqueue
from core.settings import get_settings
from core.spec import SweepCreate
from core.sweeps import TERMINAL, aggregate, effects, expand, rank_key, resolve
from core.tables import Experiment, Sweep, as_utc, utcnow

log = logging.getLogger("gradlab.api")
router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])
SessionDep = Annotated[Session, Depends(get_session)]


def get_sweep(session: Session, sweep_id: str, owner: str) -> Sweep:
    row = session.get(Sweep, sweep_id) if len(sweep_id) <= 36 else None
    if row is None or row.owner != owner:
        raise Problem(404, "Not found", f"no sweep {sweep_id!r}", "not-found")
    return row


def sweep_view(session: Session, sweep: Sweep) -> dict[str, Any]:
    rows = session.scalars(
        select(Experiment).where(Experiment.sweep_id == sweep.id).order_by(Experiment.created_at)
    ).all()
    grid: dict[str, list[Any]] = sweep.request["grid"]
    views = [experiment_view(r) for r in rows]
    points: dict[str, dict[str, Any]] = {}
    for view, row in zip(views, rows, strict=True):
        params = row.sweep_params or {}
        key = repr(sorted(params.items(), key=lambda kv: kv[0]))
        point = points.setdefault(key, {"params": params, "experiments": [], "_runs": []})
        point["experiments"].append(view["id"])
        point["_runs"].append(view)
    ordered = list(points.values())
    for p in ordered:
        p["stats"] = aggregate(p["_runs"])
    for rank, p in enumerate(sorted(ordered, key=lambda p: rank_key(p["stats"])), start=1):
        p["rank"] = rank
    counts: dict[str, int] = {}
    for v in views:
        counts[v["status"]] = counts.get(v["status"], 0) + 1
    finished = sum(n for s, n in counts.items() if s in TERMINAL)
    status = (
        "finished"
        if finished == len(views)
        else ("queued" if counts.get("queued") == len(views) else "running")
    )
    effect_rows = effects(ordered, grid)
    for p in ordered:
        del p["_runs"]
    return {
        "id": sweep.id,
        "name": sweep.name,
        "preset": sweep.request.get("preset"),
        "created_at": as_utc(sweep.created_at),
        "status": status,
        "experiments": len(views),
        "counts": counts,
        "grid": {
            k: [v.get("label", v) if k == "variant" else v for v in vs] for k, vs in grid.items()
        },
        "seeds": sweep.request["seeds"],
        "points": ordered,
        "ranking": [p["params"] for p in sorted(ordered, key=lambda p: p["rank"])],
        "effects": effect_rows,
    }


@router.get("/presets")
def list_presets(owner: Owner) -> FastJSON:
    """The built-in studies and what they run."""
    return FastJSON(
        {
            name: {"name": p["name"], "grid": p["grid"], "seeds": p["seeds"]}
            for name, p in PRESETS.items()
        }
    )


@router.post("", status_code=202, responses={404: {}, 422: {}})
def create_sweep(owner: Owner, req: SweepCreate, session: SessionDep) -> FastJSON:
    """Expand, validate every point, then queue them all (or nothing)."""
    req = resolve(req)
    points = expand(req, get_settings().max_cost)
    checked: set[tuple] = set()  # a URL is resolved once a sweep, not once a point
    for params, spec in points:
        if spec.notify is None:
            continue
        key = (spec.notify.url, tuple(spec.notify.events), "temporal" in spec.instrument.on)
        if key not in checked:
            check_notify(spec, params)
            checked.add(key)
    check_active_cap(session, owner, len(points))
    seeds = req.seeds or [0]
    sweep = Sweep(
        name=req.name,
        owner=owner,
        request={"preset": req.preset, "base": req.base, "grid": req.grid, "seeds": seeds},
    )
    session.add(sweep)
    session.flush()
    rows = []
    for params, spec in points:
        rows.append(
            Experiment(
                spec=spec.model_dump(mode="json"),
                sweep_params=params,
                name=spec.name or req.name,
                tags=spec.tags,
                owner=owner,
                sweep_id=sweep.id,
                request_id=request_id.get(),
                status="queued",
                total_steps=spec.train.steps,
                enqueued_at=utcnow(),
            )
        )
    session.add_all(rows)
    session.commit()
    for row in rows:
        try:
            enqueue(row.id)
        except Exception:  # the rows are safe; the reconciler sends them later
            log.warning("could not enqueue %s now", row.id, exc_info=True)
    return FastJSON(
        sweep_view(session, sweep), status_code=202, headers={"Location": f"/v1/sweeps/{sweep.id}"}
    )


@router.get("/{sweep_id}")
def read_sweep(owner: Owner, sweep_id: str, session: SessionDep) -> FastJSON:
    """Progress (counts per status) and, per grid point aggregated over seeds, the
    effectiveness measures, a ranking, and each factor's effect."""
    return FastJSON(sweep_view(session, get_sweep(session, sweep_id, owner)))


@router.post("/{sweep_id}/cancel", status_code=202)
def cancel_sweep(owner: Owner, sweep_id: str, session: SessionDep) -> FastJSON:
    """Cancels what has not finished: queued at once, running within CANCEL_POLL_S and a step."""
    sweep = get_sweep(session, sweep_id, owner)
    cancel_queued(session, Experiment.sweep_id == sweep.id, utcnow())
    session.execute(
        update(Experiment)
        .where(Experiment.sweep_id == sweep.id, Experiment.status == "running")
        .values(cancel_requested=True)
    )
    session.commit()
    return FastJSON(sweep_view(session, sweep), status_code=202)
