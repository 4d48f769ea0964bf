"""Report pages: GET /v1/experiments/{id}/report and /v1/sweeps/{id}/report, plain HTML.

The plots are embedded in the page as data: URIs (api/render/report.py), so the page is one
file that can be saved or mailed. In a browser, sign in at /ui/signin (a session cookie); from
a script, send the bearer header (`gradlab report ID --out report.html`). A key in the URL
(`?key=`) is refused: it lands in browser history, proxy logs and Referer headers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from api.deps import Owner, RenderSlot, SessionDep
from api.figures import experiment_figure, overlay
from api.render import plots
from api.render.report import HEADERS, experiment_page, sweep_page
from api.serializers import experiment_view, sweep_view
from core.owned import get_experiment, get_sweep, sweep_experiments
from core.tables import Event, as_utc

router = APIRouter(prefix="/v1", tags=["reports"], dependencies=[RenderSlot])
MAX_EVENTS = 50
HTML_RESPONSES = {200: {"description": "the report", "content": {"text/html": {}}}, 404: {}}


def _html(body: str) -> HTMLResponse:
    return HTMLResponse(body, headers=HEADERS)


@router.get(
    "/experiments/{experiment_id}/report", response_class=HTMLResponse, responses=HTML_RESPONSES
)
def experiment_report(owner: Owner, experiment_id: str, session: SessionDep) -> HTMLResponse:
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
def sweep_report(owner: Owner, sweep_id: str, session: SessionDep) -> HTMLResponse:
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

    def link(experiment_id: str) -> str:
        return f"/v1/experiments/{experiment_id}/report"

    return _html(sweep_page(sweep_view(sweep, rows), images, link))
