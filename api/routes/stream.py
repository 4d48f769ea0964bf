"""GET /v1/experiments/{id}/stream: live progress as Server-Sent Events, read from the database
(the source of truth; no broker involved), ending when the experiment does.

Events, each `event: <name>` with one JSON `data:` line:

- `status`: `{"status", "attempt"}`, first on connect, then on every change.
- `progress`: `{"step", "total_steps"}` when the step moves.
- `batch`: the loss and global gradient norm points of each batch the worker flushed since the
  last event, `{"loss": {"steps", "values"}, "grad_norm_total": {"steps", "values"}}` (a
  series with no new points is left out); on connect, everything flushed so far.
- `end`: the experiment resource (summary, diagnosis, error) once the status is terminal; then
  the stream closes.

A comment line (`: keep-alive`) goes out every KEEPALIVE_S when nothing else does. A retry of
the experiment (attempt + 1) starts its points again from step 0."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import Owner, SessionDep
from api.serializers import experiment_view
from core import series
from core.db import get_read_engine, get_sessionmaker
from core.owned import get_experiment
from core.status import TERMINAL
from core.tables import Experiment, SeriesChunk
from core.traces import chunks_after, concat

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])
SERIES = (series.LOSS, series.GRAD_NORM_TOTAL)
POLL_S = 0.5
KEEPALIVE_S = 15.0
SSE_RESPONSES = {
    200: {"description": "Server-Sent Events", "content": {"text/event-stream": {}}},
    404: {},
}
EXPERIMENTS = Experiment.__table__


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _row(experiment_id: str) -> Any:
    with get_read_engine().connect() as conn:
        return conn.execute(select(EXPERIMENTS).where(EXPERIMENTS.c.id == experiment_id)).first()


def _new_chunks(experiment_id: str, attempt: int, after_id: int) -> list[SeriesChunk]:
    with get_sessionmaker()() as session:
        return chunks_after(session, experiment_id, attempt, SERIES, after_id)


async def events(experiment_id: str) -> AsyncIterator[bytes]:
    status = attempt = step = None
    last_chunk = 0
    last_sent = time.monotonic()
    while True:
        row = await run_in_threadpool(_row, experiment_id)
        if row is None:  # deleted while streaming
            return
        out: list[bytes] = []
        if (row.status, row.attempt) != (status, attempt):
            if row.attempt != attempt:
                last_chunk = 0  # a new attempt's traces start over
            status, attempt = row.status, row.attempt
            out.append(sse("status", {"status": status, "attempt": attempt}))
        if row.progress_step != step:
            step = row.progress_step
            out.append(sse("progress", {"step": step, "total_steps": row.total_steps}))
        chunks = await run_in_threadpool(_new_chunks, experiment_id, row.attempt, last_chunk)
        if chunks:
            last_chunk = chunks[-1].id
            batch: dict[str, Any] = {}
            for name in SERIES:
                mine = [c for c in chunks if c.name == name]
                if mine:
                    steps, values = concat(mine)
                    batch[name] = {"steps": steps, "values": values}
            out.append(sse("batch", batch))
        if status in TERMINAL:
            out.append(sse("end", experiment_view(row)))
        if out:
            last_sent = time.monotonic()
            for message in out:
                yield message
        elif time.monotonic() - last_sent > KEEPALIVE_S:
            last_sent = time.monotonic()
            yield b": keep-alive\n\n"
        if status in TERMINAL:  # a client that left ends it at the next send
            return
        await asyncio.sleep(POLL_S)


@router.get("/{experiment_id}/stream", response_class=StreamingResponse, responses=SSE_RESPONSES)
def stream_experiment(owner: Owner, experiment_id: str, session: SessionDep) -> StreamingResponse:
    """Status changes, progress, each flushed batch of loss and gradient norms, and at the end
    the experiment with its summary and diagnosis; the stream ends when the experiment does."""
    row = get_experiment(session, experiment_id, owner)
    return StreamingResponse(
        events(row.id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
