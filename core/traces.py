"""The stored traces: the only code that knows `SeriesChunk` and its byte layout.

A series is stored in chunks, each holding the steps of one flushed batch as little-endian
int64 and their values as little-endian float64, `width` values a step (1 for a scalar series,
T for a temporal profile). Writing takes the worker's numpy arrays as they are (no numpy import
here: `ndarray.astype` does the packing); reading uses the standard library only, since the API
has no numpy."""

import math
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from core.tables import ExternalBatch, SeriesChunk

STEP_DTYPE, VALUE_DTYPE = "<i8", "<f8"  # numpy names of the stored layout


def chunk_row(
    experiment_id: str, attempt: int, name: str, steps: Sequence[int], values: Any
) -> SeriesChunk:
    """One chunk of series `name`: `values` a numpy array of shape (len(steps), width)."""
    return SeriesChunk(
        experiment_id=experiment_id,
        attempt=attempt,
        name=name,
        first_step=steps[0],
        width=values.shape[1],
        steps=_pack("q", steps),
        values=values.astype(VALUE_DTYPE, order="C", copy=False).tobytes(),
    )


def packed_chunk_row(
    experiment_id: str,
    attempt: int,
    name: str,
    steps: Sequence[int],
    width: int,
    packed_steps: bytes,
    packed_values: bytes,
) -> SeriesChunk:
    """One chunk from bytes already in the stored layout (an external run's upload, checked by
    core.external.decode_series): stored as they came."""
    return SeriesChunk(
        experiment_id=experiment_id,
        attempt=attempt,
        name=name,
        first_step=min(steps),
        width=width,
        steps=packed_steps,
        values=packed_values,
    )


def batch_stored(session: Session, experiment_id: str, seq: int) -> bool:
    """Whether an external run's batch number `seq` is already stored."""
    return bool(
        session.scalar(
            select(
                exists().where(
                    ExternalBatch.experiment_id == experiment_id, ExternalBatch.seq == seq
                )
            )
        )
    )


def add_batch(
    session: Session, experiment_id: str, seq: int, chunks: Iterable[SeriesChunk]
) -> None:
    """An external run's batch `seq` with its chunks, in the caller's transaction. The
    (experiment, seq) primary key makes the commit of a second copy fail (IntegrityError):
    the caller rolls it back, so a retried upload is stored once even when two copies race."""
    session.add(ExternalBatch(experiment_id=experiment_id, seq=seq))
    session.add_all(list(chunks))


def delete_earlier_attempts(session: Session, experiment_id: str, attempt: int) -> None:
    """A failed attempt's partial traces are not mixed with the next one's."""
    session.execute(
        delete(SeriesChunk).where(
            SeriesChunk.experiment_id == experiment_id, SeriesChunk.attempt < attempt
        )
    )


def delete_traces(session: Session, experiment_id: str) -> int:
    """Every stored chunk of an experiment, of every attempt (the experiment is being deleted).
    Returns how many chunks went."""
    res = session.execute(delete(SeriesChunk).where(SeriesChunk.experiment_id == experiment_id))
    return res.rowcount


def _pack(code: str, items: Sequence[int]) -> bytes:
    a = array(code, items)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def _unpack(code: str, raw: bytes) -> array:
    a = array(code, raw)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def _of_attempt(row: Any) -> tuple:
    return (SeriesChunk.experiment_id == row.id, SeriesChunk.attempt == row.attempt)


SCALAR_CHUNKS_PER_FETCH = 200
# A vector chunk is one flushed batch of profiles (steps x T values, up to an upload's 16 MB):
# a few at a time.
VECTOR_CHUNKS_PER_FETCH = 4


def _iter_chunks(
    session: Session, experiment_id: str, attempt: int, prefix: str | None, width: Any, per: int
) -> Iterator[SeriesChunk]:
    q = select(SeriesChunk).where(
        SeriesChunk.experiment_id == experiment_id, SeriesChunk.attempt == attempt, width
    )
    if prefix:
        q = q.where(SeriesChunk.name.startswith(prefix, autoescape=True))
    q = q.order_by(SeriesChunk.name, SeriesChunk.first_step)
    yield from session.scalars(q.execution_options(yield_per=per))


def iter_scalar_chunks(
    session: Session, experiment_id: str, attempt: int, prefix: str | None
) -> Iterator[SeriesChunk]:
    """Every scalar (width 1) chunk of an attempt, by name then step, fetched in batches."""
    width = SeriesChunk.width == 1
    yield from _iter_chunks(session, experiment_id, attempt, prefix, width, SCALAR_CHUNKS_PER_FETCH)


def iter_vector_chunks(
    session: Session, experiment_id: str, attempt: int, prefix: str | None
) -> Iterator[SeriesChunk]:
    """Every vector (width > 1) chunk of an attempt (temporal profiles, credit, exponents, ...),
    by name then step, VECTOR_CHUNKS_PER_FETCH at a time."""
    width = SeriesChunk.width > 1
    yield from _iter_chunks(session, experiment_id, attempt, prefix, width, VECTOR_CHUNKS_PER_FETCH)


def iter_rows(chunk: SeriesChunk) -> Iterator[tuple[int, tuple[float, ...]]]:
    """A chunk's points one step at a time, (step, its `width` values), each row decoded only
    when it is reached: a large chunk is never unpacked whole."""
    steps = _unpack("q", chunk.steps)
    row = struct.Struct(f"<{chunk.width}d")
    yield from zip(steps, row.iter_unpack(chunk.values), strict=True)


def chunks_after(
    session: Session,
    experiment_id: str,
    attempt: int,
    names: Iterable[str],
    after_id: int,
    limit: int | None = None,
) -> list[SeriesChunk]:
    """Chunks of the named series stored after chunk `after_id`, in the order they were stored
    (the first `limit` of them)."""
    q = (
        select(SeriesChunk)
        .where(
            SeriesChunk.experiment_id == experiment_id,
            SeriesChunk.attempt == attempt,
            SeriesChunk.name.in_(list(names)),
            SeriesChunk.id > after_id,
        )
        .order_by(SeriesChunk.id)
    )
    return list(session.scalars(q if limit is None else q.limit(limit)))


def unpack(chunk: SeriesChunk) -> tuple[list[int], list[list[float]]]:
    steps = _unpack("q", chunk.steps).tolist()
    values = _unpack("d", chunk.values).tolist()
    w = chunk.width
    return steps, [values[i * w : (i + 1) * w] for i in range(len(steps))]


def concat(chunks: list[SeriesChunk]) -> tuple[list[int], list[float]]:
    """A scalar series (width 1) from the chunks given (a few: read_series is the bounded
    reader of a whole series), in step order."""
    steps: list[int] = []
    values: list[float] = []
    for c in sorted(chunks, key=lambda c: c.first_step):
        steps.extend(_unpack("q", c.steps).tolist())
        values.extend(_unpack("d", c.values).tolist())
    return steps, values


# --- bounded reads: thin before unpacking -----------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Which points of a series an answer keeps: a step range, then every k-th point, then at
    most `max_points` evenly spaced (the range's first and last point kept)."""

    from_step: int | None = None
    to_step: int | None = None
    every: int = 1
    max_points: int | None = None

    def pick(self, steps: Sequence[int]) -> Sequence[int]:
        """Indices into `steps` (ascending) to keep: a range, no list of every step."""
        lo = 0 if self.from_step is None else bisect_left(steps, self.from_step)
        hi = len(steps) if self.to_step is None else bisect_right(steps, self.to_step)
        kept = range(lo, max(lo, hi), self.every)
        if self.max_points is not None and len(kept) > self.max_points:
            n, most = len(kept), self.max_points
            if most == 1:
                return kept[:1]
            return [kept[p] for p in sorted({round(k * (n - 1) / (most - 1)) for k in range(most)})]
        return kept


Picker = Callable[[Sequence[int]], Sequence[int]]


def at_steps(wanted: Iterable[int]) -> Picker:
    """A picker of the points at the given steps (those of them the series has)."""
    wanted = sorted(set(wanted))

    def pick(steps: Sequence[int]) -> Sequence[int]:
        out = []
        for s in wanted:
            i = bisect_left(steps, s)
            if i < len(steps) and steps[i] == s:
                out.append(i)
        return out

    return pick


@dataclass
class _Layout:
    """A series' chunks without their values: ids, steps (one array), where each chunk starts."""

    width: int
    ids: list[int]
    starts: list[int]  # index of each chunk's first step in `steps`
    steps: array


def _layouts(session: Session, row: Any, where: Any) -> dict[str, _Layout]:
    q = (
        select(SeriesChunk.id, SeriesChunk.name, SeriesChunk.width, SeriesChunk.steps)
        .where(*_of_attempt(row), where)
        .order_by(SeriesChunk.name, SeriesChunk.first_step)
    )
    out: dict[str, _Layout] = {}
    for chunk_id, name, width, steps in session.execute(q.execution_options(yield_per=500)):
        lay = out.setdefault(name, _Layout(width, [], [], array("q")))
        lay.ids.append(chunk_id)
        lay.starts.append(len(lay.steps))
        lay.steps.extend(_unpack("q", steps))
    return out


def decode_rows(raw: bytes, width: int, indices: Iterable[int]) -> list[Any]:
    """Only the rows asked for of a chunk's values: a float each (width 1) or a list of
    `width` floats; the rest of the chunk is never unpacked."""
    if width == 1:
        return [struct.unpack_from("<d", raw, i * 8)[0] for i in indices]
    row_format = f"<{width}d"
    return [list(struct.unpack_from(row_format, raw, i * 8 * width)) for i in indices]


VALUES_BATCH = 64  # chunks whose values are fetched in one query


def read_series(
    session: Session,
    row: Any,
    *,
    names: Iterable[str] | None = None,
    prefix: str | None = None,
    pick: Picker | dict[str, Picker] = Window().pick,
    max_values: int | None = None,
) -> dict[str, tuple[list[int], list[Any]]]:
    """The named series (or those starting with `prefix`) of `row`'s current attempt, each as
    (steps, values) with only the points `pick` keeps (a picker per series name, or one for
    all). Bounded: the steps are read first (8 bytes a point), then the values of the chunks
    holding kept points only, a batch at a time, and of those only the kept rows are decoded.
    `max_values`: past this many values in all (a vector row is `width` values), every
    series keeps an evenly spaced share of its points. A series with no chunks is absent."""
    if names is not None:
        where = SeriesChunk.name.in_(list(names))
    else:
        where = SeriesChunk.name.startswith(prefix or "", autoescape=True)
    layouts = _layouts(session, row, where)
    kept: dict[str, Sequence[int]] = {}
    for name, lay in layouts.items():
        chooser = pick.get(name, Window().pick) if isinstance(pick, dict) else pick
        kept[name] = chooser(lay.steps)
    total = sum(len(k) * layouts[n].width for n, k in kept.items())
    if max_values is not None and total > max_values:
        stride = math.ceil(total / max_values)
        kept = {n: list(k)[::stride] for n, k in kept.items()}
    # which rows of which chunk: chunk id -> (name, [row within the chunk])
    wanted: dict[int, tuple[str, list[int]]] = {}
    for name, indices in kept.items():
        lay = layouts[name]
        for i in indices:
            c = bisect_right(lay.starts, i) - 1
            wanted.setdefault(lay.ids[c], (name, []))[1].append(i - lay.starts[c])
    values: dict[str, dict[int, list[Any]]] = {n: {} for n in layouts}
    ids = list(wanted)
    for b in range(0, len(ids), VALUES_BATCH):
        batch = ids[b : b + VALUES_BATCH]
        for chunk_id, raw in session.execute(
            select(SeriesChunk.id, SeriesChunk.values).where(SeriesChunk.id.in_(batch))
        ):
            name, rows_of = wanted[chunk_id]
            values[name][chunk_id] = decode_rows(raw, layouts[name].width, rows_of)
    out: dict[str, tuple[list[int], list[Any]]] = {}
    for name, lay in layouts.items():
        out_values: list[Any] = []
        for chunk_id in lay.ids:
            out_values.extend(values[name].get(chunk_id, ()))
        out[name] = ([lay.steps[i] for i in kept[name]], out_values)
    return out


def series_mean(session: Session, row: Any, name: str) -> float | None:
    """The mean of a scalar series over every point, a chunk at a time (never whole)."""
    total, n = 0.0, 0
    q = select(SeriesChunk.values).where(*_of_attempt(row), SeriesChunk.name == name)
    for (raw,) in session.execute(q.execution_options(yield_per=50)):
        vals = _unpack("d", raw)
        total, n = total + sum(vals), n + len(vals)
    return total / n if n else None


def raw_series(session: Session, row: Any, names: Iterable[str]) -> dict[str, list[SeriesChunk]]:
    """The stored chunks of each named series of `row`'s current attempt, bytes as stored:
    for the binary answers, which stream them as they are (their size is bounded by the
    experiment's stored-volume budget, MAX_TRACE_BYTES, checked at submit)."""
    names = list(names)
    q = select(SeriesChunk).where(*_of_attempt(row), SeriesChunk.name.in_(names))
    out: dict[str, list[SeriesChunk]] = {n: [] for n in names}
    for c in session.scalars(q):
        out[c.name].append(c)
    return out


def raw_prefixed(session: Session, row: Any, prefix: str) -> dict[str, list[SeriesChunk]]:
    """raw_series for every series whose name starts with `prefix`."""
    q = select(SeriesChunk).where(
        *_of_attempt(row), SeriesChunk.name.startswith(prefix, autoescape=True)
    )
    out: dict[str, list[SeriesChunk]] = {}
    for c in session.scalars(q):
        out.setdefault(c.name, []).append(c)
    return out
