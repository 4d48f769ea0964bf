"""GET /v1/experiments/{id}/export.csv: the scalar series of an experiment as CSV rows
`step,name,value`, series by series (by name), each in step order; streamed, so a long run
never sits whole in memory. Non-finite values are written `nan`, `inf`, `-inf`. The vector
series (temporal profiles) are not in it: they are in /gradients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Owner
from api.db import get_session, get_sessionmaker
from api.routes.experiments import get_experiment
from api.tables import SeriesChunk
from api.traces import unpack

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])
SessionDep = Annotated[Session, Depends(get_session)]
CSV_RESPONSES = {
    200: {"description": "step,name,value rows", "content": {"text/csv": {}}},
    404: {},
}


def _number(v: float) -> str:
    return repr(v) if v == v and v not in (float("inf"), float("-inf")) else str(v)


def csv_rows(experiment_id: str, attempt: int, prefix: str | None) -> Iterator[bytes]:
    """The CSV, a chunk of rows at a time, read in its own session (the request's is closed by
    the time the body streams)."""
    yield b"step,name,value\n"
    q = select(SeriesChunk).where(
        SeriesChunk.experiment_id == experiment_id,
        SeriesChunk.attempt == attempt,
        SeriesChunk.width == 1,
    )
    if prefix:
        q = q.where(SeriesChunk.name.startswith(prefix, autoescape=True))
    q = q.order_by(SeriesChunk.name, SeriesChunk.first_step)
    with get_sessionmaker()() as session:
        for chunk in session.scalars(q.execution_options(yield_per=200)):
            steps, values = unpack(chunk)
            name = chunk.name if "," not in chunk.name else f'"{chunk.name}"'
            yield "".join(
                f"{s},{name},{_number(v[0])}\n" for s, v in zip(steps, values, strict=True)
            ).encode()


@router.get(
    "/{experiment_id}/export.csv", response_class=StreamingResponse, responses=CSV_RESPONSES
)
def export_csv(
    owner: Owner,
    experiment_id: str,
    session: SessionDep,
    prefix: Annotated[
        str | None, Query(max_length=200, description="only series whose name starts so")
    ] = None,
) -> StreamingResponse:
    """Every scalar series (loss, val_loss, lr, grad_norm_total, grad/<param>, clip/...,
    spectrum/..., saturation/..., update_ratio/..., weight_norm/...) as `step,name,value`."""
    row = get_experiment(session, experiment_id, owner)
    return StreamingResponse(
        csv_rows(row.id, row.attempt, prefix),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{row.id}.csv"'},
    )
