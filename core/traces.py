"""The packed format of stored series: little-endian int64 steps and float64 values, `width`
values per step. Decoding uses the standard library only (the API has no numpy)."""

import sys
from array import array

from core.tables import SeriesChunk

STEP_DTYPE, VALUE_DTYPE = "<i8", "<f8"  # numpy names, used by the worker to pack


def _unpack(code: str, raw: bytes) -> array:
    a = array(code, raw)
    if sys.byteorder != "little":
        a.byteswap()
    return a


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
