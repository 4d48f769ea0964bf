"""An experiment's series for other tools, read series by series (by name), each in step
order, in a session of their own and a chunk at a time (a vector chunk a row at a time), so a
long run never sits whole in memory.

- GET /v1/experiments/{id}/export.csv: the scalar series as rows `step,name,value`, streamed.
- GET /v1/experiments/{id}/export/vectors.csv: the vector series (the temporal profiles
  `temporal/{layer}`, `cell_temporal/{layer}`, `credit`, `lyapunov/{layer}`,
  `conditioning/{layer}/...`, `reach/{layer}...`) in long format, rows `step,name,index,value`
  (`index` is t for a profile, the key input for credit, the exponent's rank, the lag's
  position), streamed; `df[df.name == "temporal/0"].pivot(index="step", columns="index",
  values="value")` is pandas' steps x T matrix.
- GET /v1/experiments/{id}/export/tensorboard: a .tar.gz of one TensorBoard run directory
  holding one event file: the scalars, and each vector as a histogram tensor a step (see
  `api.render.tfevents`).

Non-finite values are written `nan`, `inf`, `-inf` in the CSVs; every other value as the
shortest text that reads back as the stored float64."""

from __future__ import annotations

import gzip
import re
import tarfile
from collections.abc import Callable, Iterator
from tempfile import SpooledTemporaryFile
from typing import IO, Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.deps import Owner, SessionDep
from api.render.tfevents import EventWriter
from api.serializers import run_label
from core.db import get_sessionmaker
from core.owned import get_experiment
from core.tables import Experiment, as_utc
from core.traces import iter_rows, iter_scalar_chunks, iter_vector_chunks, unpack

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])
PrefixQuery = Annotated[
    str | None, Query(max_length=200, description="only series whose name starts so")
]
CSV_RESPONSES = {
    200: {"description": "step,name,value rows", "content": {"text/csv": {}}},
    404: {},
}
VECTORS_CSV_RESPONSES = {
    200: {"description": "step,name,index,value rows", "content": {"text/csv": {}}},
    404: {},
}
TENSORBOARD_RESPONSES = {
    200: {
        "description": "a .tar.gz of one TensorBoard run directory (`tensorboard --logdir`)",
        "content": {"application/gzip": {}},
    },
    404: {},
}
# Stored series names -> TensorBoard tags. TensorBoard groups its charts by the part before
# the first '/', so train and validation loss share a group, and so do the global norms.
TAGS = {
    "loss": "loss/train",
    "val_loss": "loss/validation",
    "accuracy": "accuracy/train",
    "val_accuracy": "accuracy/validation",
    "lr": "optimizer/lr",
    "grad_norm_total": "grad_norm_global/before_clip",
    "clip/after": "grad_norm_global/after_clip",
}
TAG_PREFIXES = {"grad/": "grad_norm/"}
SPOOL_BYTES = 16 * 1024 * 1024  # past this the archive being built goes to a temporary file
READ_BYTES = 64 * 1024
CSV_BLOCK_BYTES = 64 * 1024  # the vectors CSV goes out in pieces about this big


def scalar_series(
    experiment_id: str, attempt: int, prefix: str | None
) -> Iterator[tuple[str, list[int], list[float]]]:
    """Every scalar (width 1) series of an attempt as (name, steps, values), one stored chunk
    at a time: by name, then in step order. Read in its own session, since a streamed body
    outlives the request's."""
    with get_sessionmaker()() as session:
        for chunk in iter_scalar_chunks(session, experiment_id, attempt, prefix):
            steps, values = unpack(chunk)
            yield chunk.name, steps, [v[0] for v in values]


def vector_rows(
    experiment_id: str, attempt: int, prefix: str | None
) -> Iterator[tuple[str, int, tuple[float, ...]]]:
    """Every vector (width > 1) series of an attempt as (name, step, values), by name, then in
    step order, a row at a time; in a session of its own, as scalar_series."""
    with get_sessionmaker()() as session:
        for chunk in iter_vector_chunks(session, experiment_id, attempt, prefix):
            for step, values in iter_rows(chunk):
                yield chunk.name, step, values


def _number(v: float) -> str:
    return repr(v) if v == v and v not in (float("inf"), float("-inf")) else str(v)


def _csv_name(name: str) -> str:
    return name if "," not in name else f'"{name}"'


def csv_rows(experiment_id: str, attempt: int, prefix: str | None) -> Iterator[bytes]:
    """The CSV, a chunk of rows at a time."""
    yield b"step,name,value\n"
    for name, steps, values in scalar_series(experiment_id, attempt, prefix):
        quoted = _csv_name(name)
        yield "".join(
            f"{s},{quoted},{_number(v)}\n" for s, v in zip(steps, values, strict=True)
        ).encode()


def vector_csv_rows(experiment_id: str, attempt: int, prefix: str | None) -> Iterator[bytes]:
    """The vectors CSV in pieces of about CSV_BLOCK_BYTES: one step's vector is its `width`
    lines (a profile of T = 10,000 is 10,000 lines), so pieces are cut by size, not by row."""
    yield b"step,name,index,value\n"
    block: list[str] = []
    size = 0
    for name, step, values in vector_rows(experiment_id, attempt, prefix):
        head = f"{step},{_csv_name(name)},"
        lines = "".join(f"{head}{i},{_number(v)}\n" for i, v in enumerate(values))
        block.append(lines)
        size += len(lines)
        if size >= CSV_BLOCK_BYTES:
            yield "".join(block).encode()
            block, size = [], 0
    if block:
        yield "".join(block).encode()


@router.get(
    "/{experiment_id}/export.csv", response_class=StreamingResponse, responses=CSV_RESPONSES
)
def export_csv(
    owner: Owner, experiment_id: str, session: SessionDep, prefix: PrefixQuery = None
) -> StreamingResponse:
    """Every scalar series (loss, val_loss, lr, grad_norm_total, grad/<param>, clip/...,
    spectrum/..., saturation/..., update_ratio/..., weight_norm/..., credit/ratio,
    gates/<layer>/forget_mean, forget_near_1, forget_near_0) as `step,name,value`."""
    row = get_experiment(session, experiment_id, owner)
    return StreamingResponse(
        csv_rows(row.id, row.attempt, prefix),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{row.id}.csv"'},
    )


@router.get(
    "/{experiment_id}/export/vectors.csv",
    response_class=StreamingResponse,
    responses=VECTORS_CSV_RESPONSES,
)
def export_vectors_csv(
    owner: Owner, experiment_id: str, session: SessionDep, prefix: PrefixQuery = None
) -> StreamingResponse:
    """Every vector series, long format: `step,name,index,value`, one row per value. `name` is
    the stored series (`temporal/<layer>`: ||dL/dh_t||, index t; `cell_temporal/<layer>`:
    ||dL/dc_t||; `credit`: ||dL/dx|| per key input; `lyapunov/<layer>`: the top-k exponents;
    `conditioning/<layer>/sigma_max|sigma_min`: over the lags 1, 2, 4, ...;
    `reach/<layer>`, `reach/<layer>/matrix` (row-major lags x terms), `reach/<layer>/w_hh_split`).
    In pandas, `df[df.name == "temporal/0"].pivot(index="step", columns="index",
    values="value")` is the steps x T profile matrix. `prefix` picks series as in export.csv."""
    row = get_experiment(session, experiment_id, owner)
    return StreamingResponse(
        vector_csv_rows(row.id, row.attempt, prefix),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{row.id}.vectors.csv"'},
    )


def tensorboard_tag(name: str) -> str:
    """The TensorBoard tag of a stored series: `loss` -> `loss/train`, `grad/rnn.0.weight_hh_l0`
    -> `grad_norm/rnn.0.weight_hh_l0`; names already grouped (`spectrum/0/hh/sigma_max`,
    `clip/fired`, ...) stay as they are."""
    if name in TAGS:
        return TAGS[name]
    for old, new in TAG_PREFIXES.items():
        if name.startswith(old):
            return new + name.removeprefix(old)
    return name


def run_name(row: Experiment) -> str:
    """The run directory: the experiment's label (its name; for a sweep's run the grid point and
    seed too) made safe for a path, with the id's first 8 characters so that two runs of one
    name extracted into one log directory stay two runs; the id alone for an unnamed one."""
    label = run_label(row) if row.name else ""
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "_", label).strip("._")[:120]
    return f"{name}_{row.id[:8]}" if name else row.id


def step_clock(row: Experiment) -> tuple[float, Callable[[int], float]]:
    """The run's start (unix seconds) and a step -> wall time estimate. The traces store steps,
    not clock times, so step s is put (s + 1) / steps-done of the way from the start to the
    end (the last heartbeat while it runs): TensorBoard's relative and wall-time axes then show
    the run's real duration, spread evenly over its steps."""
    start = as_utc(row.started_at or row.created_at)
    end = as_utc(row.finished_at or row.heartbeat_at) or start
    t0 = start.timestamp()
    done = max(row.progress_step, 1)
    per_step = max(end.timestamp() - t0, 0.0) / done
    return t0, lambda step: t0 + min(step + 1, done) * per_step


def tensorboard_archive(row: Experiment, prefix: str | None) -> tuple[IO[bytes], int]:
    """The .tar.gz (spooled to disk past SPOOL_BYTES) and its size; the caller closes it."""
    t0, wall_time = step_clock(row)
    out = SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (outlives this function)
    try:
        with SpooledTemporaryFile(max_size=SPOOL_BYTES) as events:
            writer = EventWriter(events, t0)
            for name, steps, values in scalar_series(row.id, row.attempt, prefix):
                writer.series(tensorboard_tag(name), steps, values, map(wall_time, steps))
            for name, step, values in vector_rows(row.id, row.attempt, prefix):
                writer.vector(name, step, values, wall_time(step))
            info = tarfile.TarInfo(f"{run_name(row)}/events.out.tfevents.{int(t0)}.gradlab")
            info.size, info.mtime, info.mode = events.tell(), int(t0), 0o644
            events.seek(0)
            # gzip's header carries a time: the run's start, so an export is always the same
            # bytes. Level 6, not gzip's default 9: on a 5.9 MB event file 0.13 s instead of
            # 1.0 s, for 2 % more bytes.
            with (
                gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=int(t0)) as gz,
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                tar.addfile(info, events)
    except BaseException:
        out.close()
        raise
    size = out.tell()
    out.seek(0)
    return out, size


def _read_out(f: IO[bytes]) -> Iterator[bytes]:
    try:
        while block := f.read(READ_BYTES):
            yield block
    finally:  # also when the client goes away mid-download
        f.close()


@router.get(
    "/{experiment_id}/export/tensorboard",
    response_class=StreamingResponse,
    responses=TENSORBOARD_RESPONSES,
)
def export_tensorboard(
    owner: Owner, experiment_id: str, session: SessionDep, prefix: PrefixQuery = None
) -> StreamingResponse:
    """The series of export.csv and export/vectors.csv as a TensorBoard run: a .tar.gz of one
    directory `<name>_<id8>/` (or `<id>/`) with one `events.out.tfevents.<start>.gradlab`, for
    `tar xzf` then `tensorboard --logdir`. Scalars (the Scalars tab, float32 values): tags
    group by their first part: `loss/train`, `loss/validation`, `accuracy/...`,
    `optimizer/lr`, `grad_norm/<param>` (before clipping), `grad_norm_global/before_clip` and
    `after_clip`, `clip/fired`, `spectrum/...`, `saturation/...`, `update_ratio/...`,
    `weight_norm/...`, `credit/ratio`, `gates/...`. Vectors (the Histograms tab), under their
    stored names (`temporal/<layer>`, `cell_temporal/<layer>`, `credit`, `lyapunov/<layer>`,
    `conditioning/...`, `reach/...`): at each instrumented step a histogram whose bucket
    [i, i + 1) holds the vector's i-th value (float64), so the tab draws the profile over t
    at every training step. Wall times are spread evenly over the run's duration by step.
    `prefix` picks stored series names as in export.csv (`grad/` gives the `grad_norm/`
    tags, `temporal/` the profiles)."""
    row = get_experiment(session, experiment_id, owner)
    archive, size = tensorboard_archive(row, prefix)
    return StreamingResponse(
        _read_out(archive),
        media_type="application/gzip",
        headers={
            "Content-Disposition": f'attachment; filename="{row.id}.tensorboard.tar.gz"',
            "Content-Length": str(size),
        },
    )
