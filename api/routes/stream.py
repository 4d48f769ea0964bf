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
the experiment (attempt + 1) starts its points again from step 0.

A stream holds no database connection between polls and never a transaction: each poll is one
short read in the threadpool (the row, and new chunks only when the row moved), and a stream
whose experiment does not move polls less often (down to every IDLE_POLLS x POLL_S). At most
MAX_STREAMS_PER_OWNER open streams a key per API process (429 past that); a batch carries at
most CHUNKS_PER_POLL chunks (the rest follows at the next poll)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import Owner
from api.serializers import experiment_view
from core import series
from core.db import get_read_engine, get_sessionmaker
from core.errors import Problem
from core.owned import get_experiment
from core.settings import get_settings
from core.status import TERMINAL
from core.tables import Experiment
from core.traces import chunks_after, concat

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])
SERIES = (series.LOSS, series.GRAD_NORM_TOTAL)
POLL_S = 0.5
IDLE_POLLS = 4  # a stream whose experiment does not move waits up to this many POLL_S
KEEPALIVE_S = 15.0
CHUNKS_PER_POLL = 50
SSE_RESPONSES = {
    200: {"description": "Server-Sent Events", "content": {"text/event-stream": {}}},
    404: {},
}
EXPERIMENTS = Experiment.__table__


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class OpenStreams:
    """Open streams per owner in this process."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, owner: str, most: int) -> bool:
        with self._lock:
            if self._open[owner] >= most:
                return False
            self._open[owner] += 1
            return True

    def give_back(self, owner: str) -> None:
        with self._lock:
            self._open[owner] -= 1
            if self._open[owner] <= 0:
                del self._open[owner]

    def count(self, owner: str) -> int:
        return self._open[owner]


open_streams = OpenStreams()


def _poll(experiment_id: str, last: tuple | None, attempt: int | None, after_id: int) -> tuple:
    """One poll, no transaction held past it: the row, and, when it moved since `last`, the
    chunks stored since `after_id` (since the start for a new attempt), at most
    CHUNKS_PER_POLL."""
    with get_read_engine().connect() as conn:
        row = conn.execute(select(EXPERIMENTS).where(EXPERIMENTS.c.id == experiment_id)).first()
    if row is None:
        return None, []
    if (row.status, row.attempt, row.progress_step) == last:
        return row, []
    after = after_id if row.attempt == attempt else 0
    with get_sessionmaker()() as session:
        chunks = chunks_after(
            session, experiment_id, row.attempt, SERIES, after, limit=CHUNKS_PER_POLL
        )
    return row, chunks


async def events(experiment_id: str, owner: str | None = None) -> AsyncIterator[bytes]:
    """The stream; gives the owner's stream slot back however it ends."""
    try:
        async for message in _events(experiment_id):
            yield message
    finally:
        if owner is not None:
            open_streams.give_back(owner)


async def _events(experiment_id: str) -> AsyncIterator[bytes]:
    status = attempt = step = None
    last_chunk = 0
    last_state: tuple | None = None
    last_sent = time.monotonic()
    wait = POLL_S
    while True:
        row, chunks = await run_in_threadpool(_poll, experiment_id, last_state, attempt, last_chunk)
        if row is None:  # deleted while streaming
            return
        more = len(chunks) == CHUNKS_PER_POLL  # a full batch: look again at the next poll
        last_state = None if more else (row.status, row.attempt, row.progress_step)
        out: list[bytes] = []
        if (row.status, row.attempt) != (status, attempt):
            if row.attempt != attempt:
                last_chunk = 0  # a new attempt's traces start over
            status, attempt = row.status, row.attempt
            out.append(sse("status", {"status": status, "attempt": attempt}))
        if row.progress_step != step:
            step = row.progress_step
            out.append(sse("progress", {"step": step, "total_steps": row.total_steps}))
        if chunks:
            last_chunk = chunks[-1].id
            batch: dict[str, Any] = {}
            for name in SERIES:
                mine = [c for c in chunks if c.name == name]
                if mine:
                    steps, values = concat(mine)
                    batch[name] = {"steps": steps, "values": values}
            out.append(sse("batch", batch))
        # The terminal status is written after the run's last chunk: once it is seen and the
        # chunks are caught up, the stream has everything.
        done = status in TERMINAL and not more
        if done:
            out.append(sse("end", experiment_view(row)))
        if out:
            last_sent = time.monotonic()
            for message in out:
                yield message
        elif time.monotonic() - last_sent > KEEPALIVE_S:
            last_sent = time.monotonic()
            yield b": keep-alive\n\n"
        if done:  # a client that left ends it at the next send
            return
        # an experiment that does not move is polled less often, down to every IDLE_POLLS polls
        wait = POLL_S if out else min(wait * 2, IDLE_POLLS * POLL_S)
        await asyncio.sleep(wait)


def _owned_id(experiment_id: str, owner: str) -> str:
    with get_sessionmaker()() as session:
        return get_experiment(session, experiment_id, owner).id


@router.get(
    "/{experiment_id}/stream",
    response_class=StreamingResponse,
    responses={**SSE_RESPONSES, 429: {}},
)
async def stream_experiment(owner: Owner, experiment_id: str) -> StreamingResponse:
    """Status changes, progress, each flushed batch of loss and gradient norms, and at the end
    the experiment with its summary and diagnosis; the stream ends when the experiment does.
    At most MAX_STREAMS_PER_OWNER open at once a key (429 past that)."""
    exp_id = await run_in_threadpool(_owned_id, experiment_id, owner)
    most = get_settings().max_streams_per_owner
    if not open_streams.take(owner, most):
        raise Problem(
            429,
            "Too many open streams",
            f"this key has {most} streams open, the most MAX_STREAMS_PER_OWNER allows",
            "streams",
            headers={"Retry-After": "5"},
            open=most,
            limit=most,
        )
    return StreamingResponse(
        events(exp_id, owner),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
