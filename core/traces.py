"""The stored traces: the only code that knows `SeriesChunk` and its byte layout.

A series is stored in chunks, each holding the steps of one flushed batch as little-endian
int64 and their values as little-endian float64, `width` values a step (1 for a scalar series,
T for a temporal profile). Writing takes the worker's numpy arrays as they are (no numpy import
here: `ndarray.astype` does the packing); reading uses the standard library only, since the API
has no numpy."""

import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
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


def load_series(session: Session, row: Any, names: Iterable[str]) -> dict[str, list[SeriesChunk]]:
    """The chunks of each named series of `row`'s current attempt ([] for a series not there)."""
    names = list(names)
    chunks = session.scalars(
        select(SeriesChunk).where(*_of_attempt(row), SeriesChunk.name.in_(names))
    )
    out: dict[str, list[SeriesChunk]] = {n: [] for n in names}
    for c in chunks:
        out[c.name].append(c)
    return out


def load_prefixed(session: Session, row: Any, prefix: str) -> dict[str, list[SeriesChunk]]:
    """The chunks of every series of `row`'s current attempt whose name starts with `prefix`."""
    chunks = session.scalars(
        select(SeriesChunk).where(
            *_of_attempt(row), SeriesChunk.name.startswith(prefix, autoescape=True)
        )
    )
    out: dict[str, list[SeriesChunk]] = {}
    for c in chunks:
        out.setdefault(c.name, []).append(c)
    return out


def iter_scalar_chunks(
    session: Session, experiment_id: str, attempt: int, prefix: str | None
) -> Iterator[SeriesChunk]:
    """Every scalar (width 1) chunk of an attempt, by name then step, fetched in batches."""
    q = select(SeriesChunk).where(
        SeriesChunk.experiment_id == experiment_id,
        SeriesChunk.attempt == attempt,
        SeriesChunk.width == 1,
    )
    if prefix:
        q = q.where(SeriesChunk.name.startswith(prefix, autoescape=True))
    q = q.order_by(SeriesChunk.name, SeriesChunk.first_step)
    yield from session.scalars(q.execution_options(yield_per=200))


def chunks_after(
    session: Session, experiment_id: str, attempt: int, names: Iterable[str], after_id: int
) -> list[SeriesChunk]:
    """Chunks of the named series stored after chunk `after_id`, in the order they were stored."""
    return list(
        session.scalars(
            select(SeriesChunk)
            .where(
                SeriesChunk.experiment_id == experiment_id,
                SeriesChunk.attempt == attempt,
                SeriesChunk.name.in_(list(names)),
                SeriesChunk.id > after_id,
            )
            .order_by(SeriesChunk.id)
        )
    )


def unpack(chunk: SeriesChunk) -> tuple[list[int], list[list[float]]]:
    steps = _unpack("q", chunk.steps).tolist()
    values = _unpack("d", chunk.values).tolist()
    w = chunk.width
    return steps, [values[i * w : (i + 1) * w] for i in range(len(steps))]


def concat(chunks: list[SeriesChunk]) -> tuple[list[int], list[float]]:
    """A scalar series (width 1) from its chunks, in step order."""
    steps: list[int] = []
    values: list[float] = []
    for c in sorted(chunks, key=lambda c: c.first_step):
        steps.extend(_unpack("q", c.steps).tolist())
        values.extend(_unpack("d", c.values).tolist())
    return steps, values


def rows(chunks: list[SeriesChunk]) -> tuple[list[int], list[list[float]]]:
    """A vector series (one row of `width` values per step) from its chunks, in step order."""
    steps: list[int] = []
    values: list[list[float]] = []
    for c in sorted(chunks, key=lambda c: c.first_step):
        s, v = unpack(c)
        steps.extend(s)
        values.extend(v)
    return steps, values
