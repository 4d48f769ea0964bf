"""Storage and serving at volume: an experiment with 1,000 instrumented steps, T = 1,000 and
2 layers (2 million temporal-profile values) written through worker.store.write_batch in the
batches the worker flushes (every 200 training steps = 20 instrumented steps at every = 10),
then GET /v1/experiments/{id}/gradients served whole through the API, as JSON and as .npz
(Accept: application/x-npz), interleaved.

    .venv/bin/python bench/trace_volume.py            # SQLite file in a temporary directory
    DATABASE_URL=postgresql+psycopg://... .venv/bin/python bench/trace_volume.py

Prints the write time (total and per batch: the worker writes in a background thread, so a
batch must take well under the flush interval not to stall training), the size in the
database, the response times (JSON target < 1 s; .npz floor < 150 ms and < 20 MB), the
response sizes and the API's peak Python memory while answering (tracemalloc, one request
each, the client dropping pieces as they arrive)."""

import gc
import io
import json
import os
import statistics
import tempfile
import time
import tracemalloc

URL = os.environ.get("DATABASE_URL") or (
    f"sqlite:///{tempfile.mkdtemp(prefix='gradlab-bench-')}/trace_volume.sqlite"
)
os.environ["DATABASE_URL"] = URL

import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402

from api.main import create_app  # noqa: E402
from core import lifecycle  # noqa: E402
from core.db import get_engine, get_sessionmaker  # noqa: E402
from core.keys import create_key  # noqa: E402
from core.tables import Base, Experiment, SeriesChunk  # noqa: E402
from worker import store  # noqa: E402
from worker.instruments.base import Batch  # noqa: E402

STEPS, EVERY, T, LAYERS, FLUSH = 1000, 10, 1000, 2, 200  # instrumented steps, interval, ...
PARAMS = [
    "rnn.0.weight_ih_l0",
    "rnn.0.weight_hh_l0",
    "rnn.0.bias_ih_l0",
    "rnn.0.bias_hh_l0",
    "rnn.1.weight_ih_l0",
    "rnn.1.weight_hh_l0",
    "rnn.1.bias_ih_l0",
    "rnn.1.bias_hh_l0",
    "head.weight",
    "head.bias",
]


def batches(rng: np.random.Generator):
    """What the worker's recorder drains every FLUSH training steps."""
    per = FLUSH // EVERY
    decay = 0.99 ** np.arange(T)[::-1]  # (T,): a profile decaying back in time
    for first in range(0, STEPS, per):
        steps = [s * EVERY for s in range(first, first + per)]
        series = {
            f"temporal/{layer}": (steps, decay * rng.uniform(0.5, 2.0, (per, 1)))
            for layer in range(LAYERS)
        }
        series |= {f"grad/{p}": (steps, rng.random((per, 1))) for p in PARAMS}
        series["grad_norm_total"] = (steps, rng.random((per, 1)))
        train_steps = list(range(steps[0], steps[0] + FLUSH))
        series["loss"] = (train_steps, rng.random((FLUSH, 1)))
        yield Batch(series=series), train_steps[-1] + 1


def db_size(session) -> str:
    payload = session.scalar(
        select(func.sum(func.length(SeriesChunk.values) + func.length(SeriesChunk.steps)))
    )
    if URL.startswith("sqlite"):
        session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        path = URL.split("///", 1)[1]
        total = os.path.getsize(path)
        return f"file {total / 1e6:.1f} MB (chunk payload {payload / 1e6:.1f} MB)"
    table = session.scalar(text("SELECT pg_total_relation_size('series_chunks')"))
    return f"series_chunks {table / 1e6:.1f} MB incl. TOAST (chunk payload {payload / 1e6:.1f} MB)"


def main() -> None:
    Base.metadata.create_all(get_engine())
    sessions = get_sessionmaker()
    with sessions() as s:
        _, key = create_key(s, "bench", "bench")
        row = Experiment(
            spec={}, status="running", owner="bench", attempt=1, total_steps=STEPS * EVERY
        )
        s.add(row)
        s.commit()
        exp_id = row.id
    rng = np.random.default_rng(0)
    per_batch = []
    t0 = time.perf_counter()
    for batch, step in batches(rng):
        t = time.perf_counter()
        with sessions() as s:
            assert store.write_batch(s, exp_id, 1, batch, step)
        per_batch.append(time.perf_counter() - t)
    write = time.perf_counter() - t0
    with sessions() as s:
        lifecycle.finish(s, exp_id, 1, "succeeded", summary={}, progress_step=STEPS * EVERY)
        size = db_size(s)
        s.commit()
    print(f"database: {URL.split('://')[0]}")
    print(
        f"written: {STEPS} instrumented steps x T={T} x {LAYERS} layers = "
        f"{STEPS * T * LAYERS:,} profile values, in {len(per_batch)} batches"
    )
    print(
        f"write time: {write:.2f} s total, per batch median "
        f"{statistics.median(per_batch) * 1e3:.0f} ms, max {max(per_batch) * 1e3:.0f} ms "
        f"(a batch every {FLUSH} training steps)"
    )
    print(f"size in the database: {size}")
    url = f"/v1/experiments/{exp_id}/gradients"
    npz = {"Accept": "application/x-npz"}
    with TestClient(create_app()) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        times: dict[str, list[float]] = {"json": [], "npz": []}
        bodies: dict[str, bytes] = {}
        for _ in range(5):  # interleaved: JSON, .npz, JSON, ...
            for kind, headers in (("json", {}), ("npz", npz)):
                t = time.perf_counter()
                resp = client.get(url, headers=headers)
                times[kind].append(time.perf_counter() - t)
                assert resp.status_code == 200, resp.text
                bodies[kind] = resp.content
        peaks = {kind: peak_memory(client, url, h) for kind, h in (("json", {}), ("npz", npz))}
    got = json.loads(bodies["json"])["temporal"]["layers"]
    assert len(got) == LAYERS and len(got[0]["values"]) == STEPS and len(got[0]["values"][0]) == T
    with np.load(io.BytesIO(bodies["npz"])) as archive:
        profile = archive["temporal/1/values"]
    assert profile.shape == (STEPS, T) and profile.tolist() == got[1]["values"]
    print(f"GET /gradients whole, {len(times['json'])} interleaved requests each (target < 1 s):")
    print("| format | median | first | max | response | API peak Python memory |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind in ("json", "npz"):
        ts = times[kind]
        print(
            f"| {kind} | {statistics.median(ts):.3f} s | {ts[0]:.3f} s | {max(ts):.3f} s | "
            f"{len(bodies[kind]) / 1e6:.1f} MB | {peaks[kind] / 1e6:.0f} MB |"
        )
    print("floor for .npz: < 0.150 s and < 20 MB on the wire")


def peak_memory(client, url: str, headers: dict[str, str]) -> int:
    """Peak Python allocation while one request is answered (the test client runs the API
    in this process), above what was allocated before it, the body received included."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    with client.stream("GET", url, headers=headers) as resp:
        size = sum(len(piece) for piece in resp.iter_raw())  # drop pieces as they arrive
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert size > 0
    return peak - base


if __name__ == "__main__":
    main()
