"""Plots as PNG or SVG: an experiment's temporal heatmap, loss, gradient norms and recurrent
spectrum, and an overlay of several experiments or of a sweep's grid points.

An experiment with no data yet (queued, or running before its first flush) answers 200 with an
empty-but-valid image that says so, so a report page or a dashboard polling the URL never
breaks; an unknown plot name or format is a 404 problem."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Owner
from api.deps import get_session
from api.render import plots
from api.routes.experiments import get_experiment, load_prefixed, load_series
from api.routes.sweeps import get_sweep
from core.errors import Problem, invalid_field
from core.tables import Experiment
from core.traces import concat

if TYPE_CHECKING:
    from matplotlib.figure import Figure

router = APIRouter(prefix="/v1", tags=["plots"])
SessionDep = Annotated[Session, Depends(get_session)]
MAX_OVERLAY = 50
# 1/gamma for a plain RNN (gamma = max |f'|), as in core/diagnosis.py (the API imports no
# worker code); lstm and gru have no such single bound.
GAMMA = {"tanh": 1.0, "sigmoid": 0.25, "relu": 1.0, "leaky_relu": 1.0, "elu": 1.0, "linear": 1.0}

IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the plot",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/svg+xml": {"schema": {"type": "string"}},
        },
    },
    404: {},
}


def _title(row: Experiment, what: str) -> str:
    name = row.name or (row.spec or {}).get("name") or row.id[:8]
    verdict = (row.diagnosis or {}).get("verdict")
    return f"{name} ({row.status}{f', {verdict}' if verdict else ''}): {what}"


def _not_found(what: str, detail: str) -> Problem:
    return Problem(404, "Not found", detail, "not-found", plot=what)


def _format(fmt: str) -> str:
    if fmt not in plots.MEDIA_TYPES:
        raise _not_found(fmt, f"no format {fmt!r}: use one of {', '.join(plots.MEDIA_TYPES)}")
    return fmt


def spectrum_bound(row: Experiment) -> float | None:
    evidence = (row.diagnosis or {}).get("evidence") or {}
    bound = (evidence.get("spectrum") or {}).get("bound")
    if bound is not None:
        return float(bound)
    model = (row.spec or {}).get("model") or {}
    gamma = GAMMA.get(model.get("activation") or "") if model.get("cell") == "rnn" else None
    return 1 / gamma if gamma else None


def experiment_figure(session: Session, row: Experiment, name: str) -> Figure:
    """The named figure of one experiment, read from its current attempt's series."""
    if name == "temporal":
        layers = []
        for series, chunks in load_prefixed(session, row, "temporal/").items():
            steps, values = plots.packed_rows(chunks)
            layers.append(
                {"layer": int(series.removeprefix("temporal/")), "steps": steps, "values": values}
            )
        layers.sort(key=lambda d: d["layer"])
        return plots.temporal_figure(layers, _title(row, "gradient through time"))
    if name == "loss":
        series = load_series(session, row, ["loss", "val_loss"])
        steps, loss = concat(series["loss"])
        vsteps, vloss = concat(series["val_loss"])
        baseline = (row.summary or {}).get("baseline_loss")
        baseline = baseline if isinstance(baseline, int | float) else None
        return plots.loss_figure(steps, loss, vsteps, vloss, baseline, _title(row, "loss"))
    if name == "gradients":
        series = load_series(session, row, ["grad_norm_total", "clip/after"])
        steps, before = concat(series["grad_norm_total"])
        after_map = dict(zip(*concat(series["clip/after"]), strict=True))
        params = {}
        for series_name, chunks in sorted(load_prefixed(session, row, "grad/").items()):
            p_steps, values = concat(chunks)
            by_step = dict(zip(p_steps, values, strict=True))
            params[series_name.removeprefix("grad/")] = [by_step.get(s) for s in steps]
        after = [after_map.get(s) for s in steps]
        return plots.gradients_figure(steps, params, before, after, _title(row, "gradient norms"))
    if name == "spectrum":
        tree: dict[str, dict[str, dict[str, tuple[list[int], list[float]]]]] = {}
        for series_name, chunks in load_prefixed(session, row, "spectrum/").items():
            parts = series_name.split("/")
            if len(parts) != 4:
                continue
            _, layer, block, quantity = parts
            tree.setdefault(layer, {}).setdefault(block, {})[quantity] = concat(chunks)
        return plots.spectrum_figure(tree, spectrum_bound(row), _title(row, "recurrent spectrum"))
    raise _not_found(name, f"no plot {name!r}: use one of {', '.join(plots.NAMES)}")


def image(fig: Figure, fmt: str) -> Response:
    return Response(plots.render(fig, fmt), media_type=plots.MEDIA_TYPES[fmt])


@router.get(
    "/experiments/{experiment_id}/plots/{name}.{fmt}",
    response_class=Response,
    responses=IMAGE_RESPONSES,
)
def experiment_plot(
    owner: Owner, experiment_id: str, name: str, fmt: str, session: SessionDep
) -> Response:
    """`name`: `temporal` (heatmap of log10 ||dL/dh_t|| over time step x training step, per
    layer, with the profile at the first, middle and last instrumented steps), `loss` (with
    the task's baseline), `gradients` (per-parameter and global norms), `spectrum` (sigma_max
    and spectral radius of W_hh per gate block, with the 1/gamma line). `fmt`: `png`, `svg`.
    No data yet: an empty image that says so."""
    fmt = _format(fmt)
    row = get_experiment(session, experiment_id, owner)
    return image(experiment_figure(session, row, name), fmt)


def point_label(params: dict[str, Any] | None) -> str:
    """A grid point's values, short: `cell=lstm, seq_len=50`."""
    parts = []
    for key, value in sorted((params or {}).items()):
        if isinstance(value, dict):
            value = value.get("label", value)
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return ", ".join(parts) or "base"


SERIES_OF = {"loss": "loss", "val_loss": "val_loss", "grad_norm": "grad_norm_total"}


def overlay(
    session: Session, rows: list[Experiment], quantity: str, title: str, by_point: bool
) -> Figure:
    series_name = SERIES_OF[quantity]
    lines = []
    for row in rows:
        steps, values = concat(load_series(session, row, [series_name])[series_name])
        label = point_label(row.sweep_params) if by_point else (row.name or row.id[:8])
        lines.append((label, steps, values))
    return plots.overlay_figure(lines, quantity, title)


def sweep_rows(session: Session, sweep_id: str, owner: str) -> tuple[Any, list[Experiment]]:
    sweep = get_sweep(session, sweep_id, owner)
    rows = session.scalars(
        select(Experiment).where(Experiment.sweep_id == sweep.id).order_by(Experiment.created_at)
    ).all()
    return sweep, list(rows)


@router.get("/plots/overlay.{fmt}", response_class=Response, responses=IMAGE_RESPONSES)
def overlay_plot(
    owner: Owner,
    fmt: str,
    session: SessionDep,
    ids: Annotated[str | None, Query(max_length=50 * 37, description="comma-separated")] = None,
    sweep: Annotated[str | None, Query(max_length=36, description="a sweep id")] = None,
    quantity: Annotated[str, Query(max_length=20)] = "loss",
) -> Response:
    """Overlay one quantity (`loss`, `val_loss`, `grad_norm`) of several experiments (`ids`,
    comma-separated, at most 50) or of every experiment of a sweep (`sweep`; lines of one grid
    point share a colour and are labelled by its grid values)."""
    fmt = _format(fmt)
    if quantity not in SERIES_OF:
        raise invalid_field(
            f"quantity must be one of {', '.join(SERIES_OF)}",
            "query.quantity",
            "unknown quantity",
            "enum",
        )
    if sweep:
        sweep_row, rows = sweep_rows(session, sweep, owner)
        title = f"sweep {sweep_row.name or sweep_row.id[:8]}: {quantity}"
        return image(overlay(session, rows, quantity, title, by_point=True), fmt)
    wanted = [i.strip() for i in (ids or "").split(",") if i.strip()]
    if not wanted or len(wanted) > MAX_OVERLAY:
        raise invalid_field(
            f"give `sweep`, or `ids` with 1 to {MAX_OVERLAY} experiment ids",
            "query.ids",
            "1 to 50 ids",
            "value",
        )
    rows = [get_experiment(session, i, owner) for i in dict.fromkeys(wanted)]
    return image(overlay(session, rows, quantity, quantity, by_point=False), fmt)
