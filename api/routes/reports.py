"""Report pages: GET /v1/experiments/{id}/report and /v1/sweeps/{id}/report, plain HTML.

The plots are embedded in the page as data: URIs (api/render/report.py), so the report URL is the
only one that needs a credential. A browser cannot send a Bearer header from the address bar,
so these two routes (and only these) also take the key as `?key=`; the Authorization header
wins when both are there. A key in a URL can land in browser history and proxy logs: prefer
`gradlab report ID --out report.html` (the header, then a local file) where that matters."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from api.deps import SessionDep, current_owner
from api.figures import experiment_figure, overlay
from api.render import plots
from api.render.report import HEADERS, experiment_page, sweep_page
from api.serializers import experiment_view, sweep_view
from core.owned import get_experiment, get_sweep, sweep_experiments
from core.tables import Event, as_utc

router = APIRouter(prefix="/v1", tags=["reports"])
MAX_EVENTS = 50
HTML_RESPONSES = {200: {"description": "the report", "content": {"text/html": {}}}, 404: {}}


async def report_owner(
    request: Request,
    key: Annotated[
        str | None,
        Query(max_length=200, description="the API key, for a browser (header preferred)"),
    ] = None,
) -> str:
    """`Owner`, with the key also accepted as `?key=`: the same checks (cache, revocation,
    rate limit) run on it, as if it had come in the Authorization header."""
    if key and not request.headers.get("authorization", "").strip():
        scope = dict(request.scope)
        scope["headers"] = [
            *((k, v) for k, v in request.scope["headers"] if k.lower() != b"authorization"),
            (b"authorization", f"Bearer {key}".encode()),
        ]
        return await current_owner(Request(scope))
    return await current_owner(request)


ReportOwner = Annotated[str, Depends(report_owner)]


def _html(body: str) -> HTMLResponse:
    return HTMLResponse(body, headers=HEADERS)


@router.get(
    "/experiments/{experiment_id}/report", response_class=HTMLResponse, responses=HTML_RESPONSES
)
def experiment_report(owner: ReportOwner, experiment_id: str, session: SessionDep) -> HTMLResponse:
    """One self-contained HTML page: the diagnosis with its evidence and mitigations, the
    plots (embedded PNGs), the summary, the events and the spec."""
    row = get_experiment(session, experiment_id, owner)
    images = {
        name: plots.render(experiment_figure(session, row, name), "png") for name in plots.NAMES
    }
    q = select(Event).where(Event.experiment_id == row.id).order_by(Event.id).limit(MAX_EVENTS)
    events = [
        {
            "step": e.step,
            "kind": e.kind,
            "attempt": e.attempt,
            "detail": e.detail,
            "created_at": as_utc(e.created_at),
        }
        for e in session.scalars(q)
    ]
    return _html(experiment_page(experiment_view(row), images, events))


@router.get("/sweeps/{sweep_id}/report", response_class=HTMLResponse, responses=HTML_RESPONSES)
def sweep_report(
    owner: ReportOwner,
    sweep_id: str,
    session: SessionDep,
    key: Annotated[str | None, Query(max_length=200, include_in_schema=False)] = None,
) -> HTMLResponse:
    """One self-contained HTML page: validation and training loss of every run overlaid (one
    colour a grid point), the points ranked with their statistics, each factor's effect, and
    links to every experiment's report."""
    sweep = get_sweep(session, sweep_id, owner)
    rows = sweep_experiments(session, sweep)
    images = {
        f"{q}": plots.render(
            overlay(session, rows, q, f"sweep {sweep.name or sweep.id[:8]}: {q}", True), "png"
        )
        for q in ("val_loss", "loss", "grad_norm")
    }
    suffix = f"?key={quote(key)}" if key else ""  # the page was opened with ?key=: keep it

    def link(experiment_id: str) -> str:
        return f"/v1/experiments/{experiment_id}/report{suffix}"

    return _html(sweep_page(sweep_view(sweep, rows), images, link))
