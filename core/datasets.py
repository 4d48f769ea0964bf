"""Uploaded datasets: what an upload must be (checked by streaming through the file, never
unpickling, never holding an array whole), how its bytes are stored (once per SHA-256, in
chunk rows), and what the API and the sweeps need of a stored one (its shape for the
estimates, whether an experiment still uses it).

An upload is a NumPy `.npz` with `x` (N, T, F) numbers, `y` (N,) or (N, T) class ids 0..C-1
(classification) or (N,), (N, out) or (N, T, out) numbers (regression), and optionally
`lengths` (N,) in 1..T for padded sequences of different lengths."""

from __future__ import annotations

import hashlib
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, exists, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import Problem, invalid_field
from core.owned import get_dataset
from core.spec import MAX_SEQ_LEN, ExperimentCreate, TaskShape
from core.status import ACTIVE
from core.tables import Dataset, DatasetBlob, DatasetChunk, Experiment, as_utc, utcnow

if TYPE_CHECKING:
    import numpy as np

KINDS = ("classification", "regression")
MAX_FEATURES = 10_000
MAX_CLASSES = 10_000
MAX_OUTPUTS = 1_024
MAX_NAME = 200  # characters of a dataset's name (the column's size)
# Validation reads the file in blocks of this many bytes, and storage writes each chunk in
# pieces of this size, from one buffer: blocks below glibc's mmap threshold (128 KiB) come
# from memory the allocator reuses, so the API's memory stays put during an upload.
READ_BYTES = 64 * 1024
WRITE_PIECE = 64 * 1024
SQLITE_CACHE_KIB = 64  # SQLite's page cache while a blob is written (default 2000 KiB)
# PostgreSQL's binary COPY: the header (signature, flags, extension length), the trailer
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = struct.pack("!h", -1)
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def refused(what: str, field: str = "file", kind: str = "dataset") -> Problem:
    return invalid_field(f"the upload is refused: {what}", field, what, kind, title="Bad dataset")


@dataclass
class Member:
    """One array of the npz as its header says, and a stream positioned at its data."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    stream: IO[bytes]

    def blocks(self, row: int = 1) -> Iterator[np.ndarray]:
        """The data in blocks of whole rows of `row` items (C order), never all at once."""
        import numpy as np

        itemsize = self.dtype.itemsize
        per_block = max(1, READ_BYTES // max(row * itemsize, 1)) * row
        left = int(np.prod(self.shape, dtype=np.int64))
        while left > 0:
            n = min(per_block, left)
            raw = self.stream.read(n * itemsize)
            if len(raw) != n * itemsize:
                raise refused(f"array {self.name!r} is shorter than its header says")
            yield np.frombuffer(raw, dtype=self.dtype)
            left -= n


def _open_member(zf: zipfile.ZipFile, name: str) -> Member:
    import numpy as np

    stream = zf.open(f"{name}.npy")
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise refused(f"array {name!r}: .npy format version {version} is not supported")
    except ValueError as exc:
        raise refused(f"array {name!r} is not a valid .npy array: {exc}") from exc
    if dtype.hasobject or dtype.names is not None:
        raise refused(f"array {name!r} holds objects or records; only numbers are accepted")
    if dtype.kind in "USV":
        raise refused(f"array {name!r} holds strings or bytes ({dtype}); only numbers")
    if dtype.kind not in "biuf":
        raise refused(f"array {name!r} has dtype {dtype}; only integers and floats")
    if fortran and len(shape) > 1:
        raise refused(f"array {name!r} is Fortran-ordered; save np.ascontiguousarray of it")
    return Member(name, tuple(int(d) for d in shape), dtype, stream)


@dataclass
class Inspected:
    """What validation found: the row's `kind` and `meta`, the file's digest and size."""

    kind: str
    meta: dict[str, Any]
    sha256: str
    size: int


def digest(fileobj: IO[bytes], limit: int) -> tuple[str, int]:
    """SHA-256 and size, read in blocks; over `limit` bytes is a 413."""
    fileobj.seek(0)
    h, size = hashlib.sha256(), 0
    block = memoryview(bytearray(READ_BYTES))
    while n := fileobj.readinto(block):
        size += n
        if size > limit:
            raise too_large(limit)
        h.update(block[:n])
    fileobj.seek(0)
    return h.hexdigest(), size


def too_large(limit: int) -> Problem:
    return Problem(
        413,
        "Body too large",
        f"the dataset is over {limit} bytes (MAX_DATASET_BYTES)",
        "too-large",
        limit=limit,
    )


def inspect_npz(fileobj: IO[bytes], kind: str | None, limit: int) -> Inspected:
    """Validate an upload before anything of it is stored; every refusal names what is wrong."""
    # numpy on first use: the API starts without it (tests/api/test_instrument_traces.py)
    import numpy as np

    sha, size = digest(fileobj, limit)
    if fileobj.read(4) not in ZIP_MAGIC:
        raise refused("not an npz (a zip of .npy arrays, as np.savez writes)")
    fileobj.seek(0)
    try:
        with np.load(fileobj, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise refused("not an npz (a zip of .npy arrays, as np.savez writes)")
            names = set(npz.files)
            for needed in ("x", "y"):
                if needed not in names:
                    raise refused(f"no array {needed!r} (found: {sorted(names) or 'none'})")
            meta = _check_arrays(npz.zip, kind, "lengths" in names)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise refused(f"not a readable npz: {exc}") from exc
    finally:
        fileobj.seek(0)
    return Inspected(meta.pop("kind"), {**meta, "size": size}, sha, size)


def _check_arrays(zf: zipfile.ZipFile, kind: str | None, has_lengths: bool) -> dict[str, Any]:
    import numpy as np

    x = _open_member(zf, "x")
    if len(x.shape) != 3:
        raise refused(f"x must be (N, T, F); it has shape {x.shape}", "x", "rank")
    n, t, f = x.shape
    if n < 2:
        raise refused(f"x holds {n} sequence(s); at least 2 are needed to hold one out", "x")
    if t < 1:
        raise refused("x has zero-length sequences (T = 0)", "x", "zero_length")
    if t > MAX_SEQ_LEN:
        raise refused(f"T = {t} is over the limit of {MAX_SEQ_LEN} steps", "x", "limit")
    if not 1 <= f <= MAX_FEATURES:
        raise refused(f"F = {f} must be between 1 and {MAX_FEATURES}", "x", "limit")
    for block in x.blocks(f):
        if not np.isfinite(block).all():
            raise refused("x holds NaN or infinite values", "x", "non_finite")
    lengths = None
    if has_lengths:
        lm = _open_member(zf, "lengths")
        if lm.shape != (n,) or lm.dtype.kind not in "iu":
            raise refused(
                f"lengths must be (N,) = ({n},) integers; it is {lm.shape} {lm.dtype}", "lengths"
            )
        lengths = np.concatenate(list(lm.blocks())).astype(np.int64)
        if (lengths < 1).any():
            raise refused(
                "lengths holds zero-length sequences (a length below 1)", "lengths", "zero_length"
            )
        if (lengths > t).any():
            raise refused(f"lengths holds a length over T = {t}", "lengths")
    y = _open_member(zf, "y")
    if not y.shape or y.shape[0] != n:
        raise refused(f"y has {y.shape[0] if y.shape else 0} rows and x has {n}", "y", "n_mismatch")
    if kind is None:
        kind = "classification" if y.dtype.kind in "biu" else "regression"
    per_step = kind == "classification" and len(y.shape) == 2 or len(y.shape) == 3
    if per_step and y.shape[1] != t:
        raise refused(f"y per step must be (N, T, ...) with T = {t}; it is {y.shape}", "y", "rank")
    meta: dict[str, Any] = {
        "kind": kind,
        "n": n,
        "seq_len": t,
        "features": f,
        "x": {"shape": list(x.shape), "dtype": str(x.dtype)},
        "y": {"shape": list(y.shape), "dtype": str(y.dtype)},
        "target": "step" if per_step else "sequence",
        "lengths": None
        if lengths is None
        else {"min": int(lengths.min()), "max": int(lengths.max())},
    }
    if kind == "classification":
        meta.update(_check_classes(y, lengths, per_step), outputs=None)
    else:
        meta.update(_check_regression(y, lengths, per_step), classes=None)
    return meta


def _valid_steps(
    block: np.ndarray, first_row: int, lengths: np.ndarray | None, t: int, width: int
) -> np.ndarray:
    """The entries of a per-step block (whole rows of T x width) inside each row's length."""
    import numpy as np

    if lengths is None:
        return block
    rows = block.reshape(-1, t, width)
    keep = np.arange(t)[None, :] < lengths[first_row : first_row + len(rows), None]
    return rows[keep]


def _check_classes(y: Member, lengths: np.ndarray | None, per_step: bool) -> dict[str, Any]:
    import numpy as np

    if len(y.shape) not in (1, 2):
        raise refused(f"class ids y must be (N,) or (N, T); it is {y.shape}", "y", "rank")
    t = y.shape[1] if per_step else 1
    counts = np.zeros(0, dtype=np.int64)
    row = 0
    for block in y.blocks(t):
        vals = _valid_steps(block, row, lengths, t, 1).ravel() if per_step else block
        row += len(block) // t
        if y.dtype.kind == "f" and (not np.isfinite(vals).all() or (vals != np.round(vals)).any()):
            raise refused("class ids y must be whole numbers", "y", "classes")
        if vals.size and (vals.min() < 0 or vals.max() >= MAX_CLASSES):
            raise refused(f"class ids y must be 0..C-1 with C <= {MAX_CLASSES}", "y", "classes")
        got = np.bincount(vals.astype(np.int64), minlength=len(counts))
        counts = np.pad(counts, (0, len(got) - len(counts))) + got
    missing = np.flatnonzero(counts == 0)
    if len(counts) < 2:
        raise refused("y holds a single class; classification needs at least two", "y", "classes")
    if len(missing):
        shown = ", ".join(str(c) for c in missing[:10])
        raise refused(
            f"classes must be 0..C-1 with every one present; missing: {shown}", "y", "classes"
        )
    return {"classes": len(counts), "class_counts": counts.tolist()}


def _check_regression(y: Member, lengths: np.ndarray | None, per_step: bool) -> dict[str, Any]:
    import numpy as np

    if len(y.shape) > 3:
        raise refused(
            f"regression targets y must be (N,), (N, out) or (N, T, out); it is {y.shape}",
            "y",
            "rank",
        )
    outputs = 1 if len(y.shape) == 1 else y.shape[-1]
    if not 1 <= outputs <= MAX_OUTPUTS:
        raise refused(f"y has {outputs} outputs; between 1 and {MAX_OUTPUTS}", "y", "limit")
    t = y.shape[1] if per_step else 1
    row = 0
    for block in y.blocks(t * outputs):
        vals = _valid_steps(block, row, lengths, t, outputs) if per_step else block
        row += len(block) // (t * outputs)
        if not np.isfinite(vals).all():
            raise refused("y holds NaN or infinite values where they count", "y", "non_finite")
    return {"outputs": outputs}


# --- storage ---------------------------------------------------------------------------------


def store(
    session: Session,
    owner: str,
    name: str | None,
    fileobj: IO[bytes],
    found: Inspected,
    chunk_bytes: int,
) -> Dataset:
    """A dataset row pointing at the content; the content's chunks are written only when no
    upload stored the same bytes before. One transaction: a failure stores nothing."""
    for _ in range(3):
        try:
            if session.get(DatasetBlob, found.sha256) is None:
                _write_blob(session, fileobj, found, chunk_bytes)
            row = Dataset(
                owner=owner, name=name, sha256=found.sha256, kind=found.kind, meta=found.meta
            )
            session.add(row)
            session.commit()
            return row
        except IntegrityError:
            # The same bytes were stored (or their last dataset deleted) by a concurrent
            # request: look again.
            session.rollback()
    raise Problem(
        409, "Conflict", "the dataset's content changed under the upload; try again", "conflict"
    )


def _write_blob(session: Session, fileobj: IO[bytes], found: Inspected, chunk_bytes: int) -> None:
    conn = session.connection()
    n_chunks = -(-found.size // chunk_bytes)
    conn.execute(
        insert(DatasetBlob).values(
            sha256=found.sha256, size=found.size, n_chunks=n_chunks, created_at=utcnow()
        )
    )
    fileobj.seek(0)
    if conn.dialect.name == "sqlite":
        _write_chunks_sqlite(conn, fileobj, found, chunk_bytes, n_chunks)
    else:  # PostgreSQL, through psycopg (the driver the project declares)
        _write_chunks_copy(conn, fileobj, found, chunk_bytes, n_chunks)


def _pieces(fileobj: IO[bytes], n: int, buffer: memoryview) -> Iterator[memoryview]:
    """The next `n` bytes of the file, read into `buffer` piece by piece (each piece is valid
    until the next is read); a file that ends sooner is refused."""
    while n > 0:
        got = fileobj.readinto(buffer[: min(len(buffer), n)])
        if not got:
            raise refused("the upload is shorter than when it was read")
        yield buffer[:got]
        n -= got


def _write_chunks_copy(
    conn: Connection, fileobj: IO[bytes], found: Inspected, chunk_bytes: int, n_chunks: int
) -> None:
    """PostgreSQL: the chunk rows sent by one binary COPY, each chunk's bytes in WRITE_PIECE
    pieces, with libpq's output buffer flushed at every piece. A chunk bound as one parameter
    was held read and again in libpq's output buffer (grown by doubling): 1.9 MiB of peak
    growth for 1 MiB chunks, against under 0.1 MiB this way (the storing measured apart)."""
    from psycopg.copy import LibpqWriter

    raw = conn.connection.driver_connection  # psycopg.Connection, in this transaction
    key = found.sha256.encode()
    row_head = struct.pack("!hi", 3, len(key)) + key  # 3 fields; sha256 as text
    buffer = memoryview(bytearray(WRITE_PIECE))
    with raw.cursor() as cur:
        writer = LibpqWriter(cur, flush_threshold=WRITE_PIECE)
        statement = "COPY dataset_chunks (sha256, seq, data) FROM STDIN (FORMAT BINARY)"
        with cur.copy(statement, writer=writer) as copy:
            copy.write(COPY_HEADER)
            for seq in range(n_chunks):
                n = min(chunk_bytes, found.size - seq * chunk_bytes)
                copy.write(row_head + struct.pack("!iii", 4, seq, n))  # seq int4, data's length
                for piece in _pieces(fileobj, n, buffer):
                    copy.write(piece)
            copy.write(COPY_TRAILER)


def _write_chunks_sqlite(
    conn: Connection, fileobj: IO[bytes], found: Inspected, chunk_bytes: int, n_chunks: int
) -> None:
    """Each chunk row inserted as a zeroblob and filled in WRITE_PIECE pieces through
    SQLite's incremental blob I/O, with a small page cache for the transaction: a bound
    1 MiB parameter is copied by the driver and again into the record (3 chunk sizes of the
    API's memory with the bytes read, and the 2 MB default page cache filled by the write)."""
    raw = conn.connection.driver_connection  # sqlite3.Connection, in this transaction
    buffer = memoryview(bytearray(WRITE_PIECE))
    (cache,) = conn.exec_driver_sql("PRAGMA cache_size").one()
    conn.exec_driver_sql(f"PRAGMA cache_size={-SQLITE_CACHE_KIB}")
    try:
        for seq in range(n_chunks):
            n = min(chunk_bytes, found.size - seq * chunk_bytes)
            rowid = conn.execute(
                insert(DatasetChunk).values(sha256=found.sha256, seq=seq, data=func.zeroblob(n))
            ).lastrowid
            with raw.blobopen("dataset_chunks", "data", rowid) as blob:
                for piece in _pieces(fileobj, n, buffer):
                    blob.write(piece)
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size={int(cache)}")


def iter_chunks(session: Session, sha256: str) -> Iterator[bytes]:
    """The stored bytes in order, one chunk row read at a time."""
    blob = session.get(DatasetBlob, sha256)
    if blob is None:
        return
    for seq in range(blob.n_chunks):
        yield session.execute(
            select(DatasetChunk.data).where(DatasetChunk.sha256 == sha256, DatasetChunk.seq == seq)
        ).scalar_one()


def in_use_by(session: Session, row: Dataset) -> list[str]:
    """Ids of the owner's queued or running experiments on this dataset."""
    q = select(Experiment.id, Experiment.spec).where(
        Experiment.owner == row.owner, Experiment.status.in_(ACTIVE)
    )
    return [
        i
        for i, spec in session.execute(q)
        if (spec.get("task") or {}).get("name") == "dataset" and spec["task"].get("id") == row.id
    ]


def remove(session: Session, row: Dataset) -> None:
    """Delete the row, and its content when no other dataset points at it (409 while an
    experiment is queued or running on it)."""
    if using := in_use_by(session, row):
        raise Problem(
            409,
            "Dataset in use",
            f"{len(using)} queued or running experiment(s) use this dataset; cancel them or wait",
            "in-use",
            experiments=using[:20],
        )
    sha = row.sha256
    session.delete(row)
    session.flush()
    orphan = ~exists().where(Dataset.sha256 == sha)
    try:
        session.execute(delete(DatasetChunk).where(DatasetChunk.sha256 == sha, orphan))
        session.execute(delete(DatasetBlob).where(DatasetBlob.sha256 == sha, orphan))
        session.commit()
    except IntegrityError:  # an upload of the same bytes pointed a new row at them meanwhile
        session.rollback()
        session.delete(session.get(Dataset, row.id))
        session.commit()


def view(row: Dataset) -> dict[str, Any]:
    m = row.meta
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "n": m["n"],
        "seq_len": m["seq_len"],
        "features": m["features"],
        "target": m["target"],
        "classes": m.get("classes"),
        "outputs": m.get("outputs"),
        "lengths": m.get("lengths"),
        "shapes": {k: m[k]["shape"] for k in ("x", "y")},
        "dtypes": {k: m[k]["dtype"] for k in ("x", "y")},
        "sha256": row.sha256,
        "size": m["size"],
        "created_at": as_utc(row.created_at),
    }


# --- what specs need of a stored dataset -----------------------------------------------------


def check_task(session: Session, owner: str, spec: ExperimentCreate) -> TaskShape | None:
    """The dataset's shape for the estimates (None for a built-in task); a 422 naming the field
    when the dataset is missing or does not fit the task's options."""
    task = spec.task
    if task.name != "dataset":
        return None
    try:
        row = get_dataset(session, task.id, owner)
    except Problem as exc:
        raise invalid_field(
            f"no dataset {task.id!r}", "task.id", "unknown dataset", "not_found"
        ) from exc
    m = row.meta
    if task.readout == "every" and m["target"] != "step":
        raise invalid_field(
            "readout 'every' needs a target at every step: y (N, T) or (N, T, out)",
            "task.readout",
            "no per-step targets",
            "value",
        )
    if task.key_steps and max(task.key_steps) >= m["seq_len"]:
        raise invalid_field(
            f"key_steps must be below T = {m['seq_len']}", "task.key_steps", "out of range", "value"
        )
    if task.solved and task.solved.val_accuracy is not None and row.kind != "classification":
        raise invalid_field(
            "val_accuracy applies to classification datasets",
            "task.solved",
            "no accuracy for regression",
            "value",
        )
    return TaskShape(m["seq_len"], m["features"])
