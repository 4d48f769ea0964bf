"""Export at volume: an experiment with 100,000 scalar points (loss at each of 50,000 steps,
and 10 parameters' gradient norms at every 10th step) written through worker.store, then
GET /export/tensorboard and GET /export.csv served whole through the API.

    .venv/bin/python bench/export_volume.py            # SQLite file in a temporary directory
    DATABASE_URL=postgresql+psycopg://... .venv/bin/python bench/export_volume.py

Prints each route's time (median and max of 5) and size, and the time of the event file
alone (api.render.tfevents) on the same points without the database, with google-crc32c's CRC32C and
with a pure-Python table in its place, interleaved: why the API depends on google-crc32c."""

import io
import os
import statistics
import tempfile
import time

URL = os.environ.get("DATABASE_URL") or (
    f"sqlite:///{tempfile.mkdtemp(prefix='gradlab-bench-')}/export_volume.sqlite"
)
os.environ["DATABASE_URL"] = URL

import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import api.render.tfevents  # noqa: E402
from api.main import create_app  # noqa: E402
from api.render.tfevents import EventWriter  # noqa: E402
from api.routes.export import scalar_series, tensorboard_tag  # noqa: E402
from core import lifecycle  # noqa: E402
from core.db import get_engine, get_sessionmaker  # noqa: E402
from core.keys import create_key  # noqa: E402
from core.tables import Base, Experiment  # noqa: E402
from worker import store  # noqa: E402
from worker.instruments.base import Batch  # noqa: E402

STEPS, EVERY, FLUSH = 50_000, 10, 1_000
PARAMS = (
    [f"rnn.{layer}.{p}_l0" for layer in range(2) for p in ("weight_ih", "weight_hh")]
    + [f"rnn.{layer}.{p}_l0" for layer in range(2) for p in ("bias_ih", "bias_hh")]
    + ["head.weight", "head.bias"]
)


def batches(rng: np.random.Generator):
    for first in range(0, STEPS, FLUSH):
        train_steps = list(range(first, first + FLUSH))
        steps = train_steps[::EVERY]
        series = {f"grad/{p}": (steps, rng.random((len(steps), 1))) for p in PARAMS}
        series["loss"] = (train_steps, rng.random((FLUSH, 1)))
        yield Batch(series=series), first + FLUSH


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


TABLE = _table()


def python_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def write_events(series: list) -> bytes:
    out = io.BytesIO()
    w = EventWriter(out, 1.7e9)
    for name, steps, values in series:
        w.series(tensorboard_tag(name), steps, values, [1.7e9 + s for s in steps])
    return out.getvalue()


def timed(client: TestClient, path: str) -> tuple[list[float], bytes]:
    times, body = [], b""
    for _ in range(5):
        t = time.perf_counter()
        resp = client.get(path)
        times.append(time.perf_counter() - t)
        assert resp.status_code == 200, resp.text
        body = resp.content
    return times, body


def main() -> None:
    Base.metadata.create_all(get_engine())
    sessions = get_sessionmaker()
    with sessions() as s:
        _, key = create_key(s, "bench", "bench")
        row = Experiment(spec={}, status="running", owner="bench", attempt=1, total_steps=STEPS)
        s.add(row)
        s.commit()
        exp_id = row.id
    rng = np.random.default_rng(0)
    for batch, step in batches(rng):
        with sessions() as s:
            assert store.write_batch(s, exp_id, 1, batch, step)
    with sessions() as s:
        lifecycle.finish(s, exp_id, 1, "succeeded", summary={}, progress_step=STEPS)
        s.commit()
    series = list(scalar_series(exp_id, 1, None))
    points = sum(len(steps) for _, steps, _ in series)
    print(f"database: {URL.split('://')[0]}; {points:,} scalar points in {len(series)} chunks")

    package = api.render.tfevents.crc32c
    assert python_crc32c(b"123456789") == package(b"123456789") == 0xE3069283
    writes: dict[str, list[float]] = {"google-crc32c": [], "pure-Python CRC32C": []}
    for _ in range(5):
        for label, crc in (("google-crc32c", package), ("pure-Python CRC32C", python_crc32c)):
            api.render.tfevents.crc32c = crc
            api.render.tfevents._header.cache_clear()
            t = time.perf_counter()
            events = write_events(series)
            writes[label].append(time.perf_counter() - t)
    api.render.tfevents.crc32c = package
    for label, times in writes.items():
        print(
            f"event file alone, {label} (no database, no gzip): median "
            f"{statistics.median(times):.3f} s, max {max(times):.3f} s, {len(events) / 1e6:.1f} MB"
        )
    with TestClient(create_app()) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        for label, path in (
            ("GET /export/tensorboard", f"/v1/experiments/{exp_id}/export/tensorboard"),
            ("GET /export.csv", f"/v1/experiments/{exp_id}/export.csv"),
        ):
            times, body = timed(client, path)
            print(
                f"{label}: median {statistics.median(times):.3f} s, max {max(times):.3f} s "
                f"over {len(times)} requests; {len(body) / 1e6:.1f} MB"
            )


if __name__ == "__main__":
    main()
