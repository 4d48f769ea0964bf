"""Plots as PNG or SVG: an experiment's temporal heatmap, loss, gradient norms and recurrent
spectrum, and an overlay of several experiments or of a sweep's grid points.

An experiment with no data yet (queued, or running before its first flush) answers 200 with an
empty-but-valid image that says so, so a report page or a dashboard polling the URL never
breaks; an unknown plot name or format is a 404 problem."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.deps import Owner, RenderSlot, SessionDep
from api.figures import SERIES_OF, experiment_figure, overlay
from api.render import plots
from core.errors import Problem, invalid_field
from core.owned import get_experiment, get_sweep, sweep_experiments

if TYPE_CHECKING:
    from matplotlib.figure import Figure

router = APIRouter(prefix="/v1", tags=["plots"], dependencies=[RenderSlot])
MAX_OVERLAY = 50
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


def _not_found(what: str, detail: str) -> Problem:
    return Problem(404, "Not found", detail, "not-found", plot=what)


def _format(fmt: str) -> str:
    if fmt not in plots.MEDIA_TYPES:
        raise _not_found(fmt, f"no format {fmt!r}: use one of {', '.join(plots.MEDIA_TYPES)}")
    return fmt


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
    and spectral radius of W_hh per gate block, with the 1/gamma line), `lyapunov` (conditioning
    over lags and the top Lyapunov exponents per layer), `credit` (the credit ratio and the
    gradient at each key input). `fmt`: `png`, `svg`.
    No data yet: an empty image that says so."""
    fmt = _format(fmt)
    if name not in plots.NAMES:
        raise _not_found(name, f"no plot {name!r}: use one of {', '.join(plots.NAMES)}")
    row = get_experiment(session, experiment_id, owner)
    return image(experiment_figure(session, row, name), fmt)


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
        sweep_row = get_sweep(session, sweep, owner)
        rows = sweep_experiments(session, sweep_row)
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
