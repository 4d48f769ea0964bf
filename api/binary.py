"""Traces as numbers, not JSON: a trace route answers `Accept: application/x-npz` with a
NumPy .npz archive (a ZIP of .npy arrays, stored uncompressed), streamed member by member.

Each series of the route is two members, named by the series: `{name}/steps` (int64, (n,))
and `{name}/values` (float64, (n,) for a scalar series, (n, width) for a vector one such as
`temporal/{layer}`: row i is the profile at steps[i]). Values are the stored float64s as
they are: NaN and +-Inf stay themselves (JSON has null for them). The thinning parameters
apply per series, as in JSON. `numpy.load(io.BytesIO(body))` reads it.

The stored chunks are already little-endian int64 steps and float64 values (core/traces.py),
so an unthinned series is the chunks' bytes behind a .npy header: nothing is decoded into
Python objects, and beside the chunks read from the database the stream holds one member's
pieces at a time (JSON builds every value as a Python float first)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from api.deps import Thinning

if TYPE_CHECKING:
    import numpy as np

NPZ = "application/x-npz"
# For the OpenAPI document: the trace routes' second representation.
NPZ_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {NPZ: {"schema": {"type": "string", "format": "binary"}}}}
}


def wants_npz(request: Request) -> bool:
    """Content negotiation: the client listed the .npz type in Accept (JSON stays the default)."""
    return NPZ in request.headers.get("accept", "")


PIECE = 1 << 20  # bytes a streamed piece: each piece costs a trip through the server's send


class _Sink:
    """A write-only stream for zipfile (it then writes data descriptors, no seeking) that
    hands out what was written in pieces of about PIECE bytes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def drain(self, final: bool = False) -> Iterator[bytes]:
        if self.size >= PIECE or (final and self.parts):
            parts, self.parts, self.size = self.parts, [], 0
            yield parts[0] if len(parts) == 1 else b"".join(parts)


def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    import numpy as np  # on the first binary answer: `import api.main` stays free of numpy

    header: dict[str, Any] = {"descr": dtype, "fortran_order": False, "shape": shape}
    sink = _Sink()
    np.lib.format.write_array_header_1_0(sink, header)
    return b"".join(sink.parts)


def _series_parts(chunks: list[Any], thin: Thinning) -> tuple[np.ndarray, int, list[bytes]]:
    """(kept steps, width, the kept values' bytes in order) of one stored series."""
    import numpy as np

    chunks = sorted(chunks, key=lambda c: c.first_step)
    width = chunks[0].width if chunks else 1
    per_chunk = [np.frombuffer(c.steps, dtype="<i8") for c in chunks]
    steps = np.concatenate(per_chunk) if per_chunk else np.zeros(0, dtype="<i8")
    keep = list(thin.window().pick(steps.tolist()))
    if len(keep) == len(steps):  # nothing thinned: the stored bytes as they are
        return steps, width, [c.values for c in chunks]
    kept = np.asarray(keep, dtype=np.int64)
    bounds = np.cumsum([0] + [len(s) for s in per_chunk])
    parts = []
    for i, c in enumerate(chunks):
        local = kept[(kept >= bounds[i]) & (kept < bounds[i + 1])] - bounds[i]
        if len(local):
            rows = np.frombuffer(c.values, dtype="<f8").reshape(-1, width)
            parts.append(rows[local].tobytes())
    return steps[kept], width, parts


def npz_stream(found: dict[str, list[Any]], thin: Thinning) -> Iterator[bytes]:
    """The .npz archive of every series in `found` (name -> its stored chunks), streamed."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name in sorted(found):
            if not found[name]:
                continue
            steps, width, parts = _series_parts(found[name], thin)
            shape = (len(steps),) if width == 1 else (len(steps), width)
            members: Iterable[tuple[str, bytes, list[bytes]]] = (
                ("steps", _npy_header("<i8", (len(steps),)), [steps.astype("<i8").tobytes()]),
                ("values", _npy_header("<f8", shape), parts),
            )
            for member, header, data in members:
                size = len(header) + sum(len(p) for p in data)
                with archive.open(f"{name}/{member}.npy", "w", force_zip64=size >= 2**31) as f:
                    f.write(header)
                    for piece in data:
                        f.write(piece)
                        yield from sink.drain()
                yield from sink.drain()
    yield from sink.drain(final=True)


def npz_response(found: dict[str, list[Any]], thin: Thinning, filename: str) -> StreamingResponse:
    return StreamingResponse(
        npz_stream(found, thin),
        media_type=NPZ,
        headers={"Content-Disposition": f'attachment; filename="{filename}.npz"'},
    )
