"""GET /v1/experiments/{id}/stream: live progress as Server-Sent Events, read from the database
(the source of truth; no broker involved), ending when the experiment does.

Events, each `event: <name>`, an `id: <cursor>` and one JSON `data:` line:

- `status`: `{"status", "attempt"}`, first on connect, then on every change.
- `progress`: `{"step", "total_steps"}` when the step moves.
- `batch`: the loss and global gradient norm points of each batch the worker flushed since the
  last event, `{"loss": {"steps", "values"}, "grad_norm_total": {"steps", "values"}}` (a
  series with no new points is left out); on connect, everything flushed so far.
- `validation`: the latest validation point, `{"step", "loss", "accuracy"}` (accuracy null
  where the task has none), when a newer one is stored.
- `verdict`: while the experiment runs, the diagnosis of what is stored so far
  (core.provisional: `{"provisional": true, "step", "verdict", "reason", "worst_layer",
  "layers", "evidence", "suggestions"}`, no outcome): on connect, then when newer instrumented
  steps are stored, at most every STREAM_VERDICT_EVERY_S (it reads the last profiles back).
- `end`: the experiment resource (summary, the final diagnosis, error) once the status is
  terminal; then the stream closes.

A comment line (`: keep-alive`) goes out every KEEPALIVE_S when nothing else does. A retry of
the experiment (attempt + 1) starts its points again from step 0.

Resuming: every event's id is the stream's cursor after it (see Cursor). A client that
reconnects with `Last-Event-ID` (EventSource does so by itself) gets only what it has not
had: no status, progress, point, validation or verdict twice. After `end` a reconnect is
answered 204 No Content, which tells EventSource to stop.

A stream holds no database connection between polls and never a transaction: each poll is one
short read in the threadpool (the row, and new chunks only when the row moved), and a stream
whose experiment does not move polls less often (down to every IDLE_POLLS x POLL_S). At most
MAX_STREAMS_PER_OWNER open streams a key per API process (429 past that); a batch carries at
most CHUNKS_PER_POLL chunks (the rest follows at the next poll)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import Owner
from api.serializers import experiment_view
from core import series
from core.db import get_read_engine, get_sessionmaker
from core.errors import Problem, invalid_field
from core.owned import get_experiment
from core.provisional import last_points, verdict_so_far
from core.settings import get_settings
from core.status import STATUSES, TERMINAL
from core.tables import Experiment
from core.traces import chunks_after, concat, read_series

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])
SERIES = (series.LOSS, series.GRAD_NORM_TOTAL)
VALIDATION = (series.VAL_LOSS, series.VAL_ACCURACY)
POLL_S = 0.5
IDLE_POLLS = 4  # a stream whose experiment does not move waits up to this many POLL_S
KEEPALIVE_S = 15.0
CHUNKS_PER_POLL = 50
SSE_RESPONSES = {
    200: {"description": "Server-Sent Events", "content": {"text/event-stream": {}}},
    404: {},
}
EXPERIMENTS = Experiment.__table__


def sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n"
    if event_id is not None:
        head += b"id: " + event_id.encode() + b"\n"
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


ENDED = "end"
CURSOR = re.compile(
    r"(\d{1,9})\.(\d{1,19})\.(-1|\d{1,10})\.(-1|\d{1,10})\.(-1|\d{1,10})\.([a-z]{1,20})"
)


@dataclass(frozen=True)
class Cursor:
    """What a stream has sent, as an event id: `attempt.chunk.step.val_step.verdict_step.status`
    (`1.42.60.49.55.running`): the attempt and status of the last `status` event, the last
    chunk of loss, gradient norm or validation read (by id: chunk ids only grow), the step of
    the last `progress`, of the last `validation` and of the last `verdict` (-1: none yet);
    the status `end` once `end` went. Only an id parsed back from a client, never trusted for
    more than where its own stream goes on: the experiment is still looked up by its owner."""

    attempt: int = 0
    chunk: int = 0
    step: int = -1
    val_step: int = -1
    verdict_step: int = -1
    status: str = ""

    def __str__(self) -> str:
        return (
            f"{self.attempt}.{self.chunk}.{self.step}.{self.val_step}.{self.verdict_step}."
            f"{self.status}"
        )

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor of a Last-Event-ID; a 422 naming the header when it is not one."""
        m = CURSOR.fullmatch(text)
        if m is None or (m[6] not in STATUSES and m[6] != ENDED):
            raise invalid_field(
                "Last-Event-ID is not an id this stream sent "
                "(attempt.chunk.step.val_step.verdict_step.status)",
                "Last-Event-ID",
                "not a stream cursor",
                "value_error",
            )
        return cls(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), m[6])

    @property
    def ended(self) -> bool:
        return self.status == ENDED


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
    chunks of loss, gradient norm and validation stored since `after_id` (since the start for
    a new attempt), at most CHUNKS_PER_POLL."""
    with get_read_engine().connect() as conn:
        row = conn.execute(select(EXPERIMENTS).where(EXPERIMENTS.c.id == experiment_id)).first()
    if row is None:
        return None, []
    if (row.status, row.attempt, row.progress_step) == last:
        return row, []
    after = after_id if row.attempt == attempt else 0
    with get_sessionmaker()() as session:
        chunks = chunks_after(
            session, experiment_id, row.attempt, SERIES + VALIDATION, after, limit=CHUNKS_PER_POLL
        )
    return row, chunks


def _latest_validation(row: Any) -> dict[str, Any] | None:
    """The last validation point stored for `row`'s attempt: its step, loss and accuracy."""
    with get_sessionmaker()() as session:
        found = read_series(session, row, names=VALIDATION, pick=last_points(1))
    steps, loss = found.get(series.VAL_LOSS, ([], []))
    if not steps:
        return None
    acc_steps, acc = found.get(series.VAL_ACCURACY, ([], []))
    accuracy = acc[-1] if acc_steps and acc_steps[-1] == steps[-1] else None
    return {"step": steps[-1], "loss": loss[-1], "accuracy": accuracy}


def _verdict(row: Any) -> dict[str, Any] | None:
    with get_sessionmaker()() as session:
        return verdict_so_far(session, row)


async def events(
    experiment_id: str, owner: str | None = None, resume: Cursor | None = None
) -> AsyncIterator[bytes]:
    """The stream; gives the owner's stream slot back however it ends."""
    try:
        async for message in _events(experiment_id, resume or Cursor()):
            yield message
    finally:
        if owner is not None:
            open_streams.give_back(owner)


class Sender:
    """Writes events, each with the cursor after it as its id."""

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor

    def move(self, **moved: Any) -> None:
        self.cursor = replace(self.cursor, **moved)

    def __call__(self, event: str, data: Any, **moved: Any) -> bytes:
        self.move(**moved)
        return sse(event, data, str(self.cursor))


async def _events(experiment_id: str, resume: Cursor) -> AsyncIterator[bytes]:
    send = Sender(resume)
    last_state: tuple | None = None
    last_sent = time.monotonic()
    wait = POLL_S
    verdict_due = True  # on connect, then when newer instrumented steps are stored
    verdict_every = get_settings().stream_verdict_every_s
    verdict_at = -verdict_every
    validation_due = True  # the latest point is read on connect, then when new ones are stored
    while True:
        cur = send.cursor
        attempt = cur.attempt if cur.status else None
        row, chunks = await run_in_threadpool(_poll, experiment_id, last_state, attempt, cur.chunk)
        if row is None:  # deleted while streaming
            return
        more = len(chunks) == CHUNKS_PER_POLL  # a full batch: look again at the next poll
        last_state = None if more else (row.status, row.attempt, row.progress_step)
        out: list[bytes] = []
        if (row.status, row.attempt) != (cur.status, cur.attempt):
            if row.attempt != cur.attempt:  # a new attempt's traces start over
                send.move(chunk=0, val_step=-1, verdict_step=-1)
                verdict_due = validation_due = True
            data = {"status": row.status, "attempt": row.attempt}
            out.append(send("status", data, status=row.status, attempt=row.attempt))
        if row.progress_step != send.cursor.step:
            data = {"step": row.progress_step, "total_steps": row.total_steps}
            out.append(send("progress", data, step=row.progress_step))
        if chunks:
            batch: dict[str, Any] = {}
            for name in SERIES:
                mine = [c for c in chunks if c.name == name]
                if mine:
                    steps, values = concat(mine)
                    batch[name] = {"steps": steps, "values": values}
            if batch:
                out.append(send("batch", batch, chunk=chunks[-1].id))
            else:
                send.move(chunk=chunks[-1].id)
            verdict_due |= series.GRAD_NORM_TOTAL in batch  # instrumented steps arrived
            validation_due |= any(c.name in VALIDATION for c in chunks)
        if validation_due:
            validation_due = False
            latest = await run_in_threadpool(_latest_validation, row)
            if latest is not None and latest["step"] > send.cursor.val_step:
                out.append(send("validation", latest, val_step=latest["step"]))
        # The verdict so far reads the last profiles back: only while running, only when
        # something new was stored, at most every STREAM_VERDICT_EVERY_S.
        now = time.monotonic()
        if row.status == "running" and verdict_due and now - verdict_at >= verdict_every:
            verdict_due, verdict_at = False, now
            so_far = await run_in_threadpool(_verdict, row)
            step = None if so_far is None else so_far["step"]
            if step is not None and step > send.cursor.verdict_step:
                out.append(send("verdict", so_far, verdict_step=step))
        # The terminal status is written after the run's last chunk: once it is seen and the
        # chunks are caught up, the stream has everything.
        done = row.status in TERMINAL and not more
        if done:
            out.append(send("end", experiment_view(row), status=ENDED))
        if out:
            last_sent = time.monotonic()
            for message in out:
                yield message
        elif time.monotonic() - last_sent > KEEPALIVE_S:
            last_sent = time.monotonic()
            yield b": keep-alive\n\n"
        if done:  # a client that left ends it at the next send
            return
        # an experiment that does not move is polled less often, down to every IDLE_POLLS polls;
        # a verdict waiting for its budget keeps the polls short
        busy = out or (verdict_due and row.status == "running")
        wait = POLL_S if busy else min(wait * 2, IDLE_POLLS * POLL_S)
        await asyncio.sleep(wait)


def _owned_id(experiment_id: str, owner: str) -> str:
    with get_sessionmaker()() as session:
        return get_experiment(session, experiment_id, owner).id


@router.get(
    "/{experiment_id}/stream",
    response_class=StreamingResponse,
    responses={
        **SSE_RESPONSES,
        204: {"description": "the stream had ended: nothing more"},
        422: {},
        429: {},
    },
)
async def stream_experiment(
    owner: Owner,
    experiment_id: str,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="the id of the last event received: the stream goes on after it",
        ),
    ] = None,
) -> Response:
    """Status changes, progress, each flushed batch of loss and gradient norms, the latest
    validation loss and, while it runs, the verdict so far (provisional), and at the end the
    experiment with its summary and diagnosis; the stream ends when the experiment does. Every
    event has an id; reconnecting with `Last-Event-ID` goes on after that event (204 after
    the end). At most MAX_STREAMS_PER_OWNER open at once a key (429 past that)."""
    resume = None if last_event_id is None else Cursor.parse(last_event_id)
    exp_id = await run_in_threadpool(_owned_id, experiment_id, owner)
    if resume is not None and resume.ended:
        return Response(status_code=204)
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
        events(exp_id, owner, resume),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
