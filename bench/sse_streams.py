"""Open SSE streams against one API process while timing other requests: /healthz and a GET of
another key's experiment, p50/p99/max, with every stream open (README, "Security and
reliability"). Loopback only, bounded in count and time. SQLite (the embedded default) in a
temporary folder, or PostgreSQL with --pg (then it also counts the API's connections left
`idle in transaction`, which must be 0).

    .venv/bin/python bench/sse_streams.py [--owners 10] [--per-owner 20] [--samples 300] [--pg]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def api_process(env: dict[str, str], log: Path) -> Iterator[str]:
    """One uvicorn process serving api.main:app; yields its base URL once /healthz answers."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1"]
            + ["--port", str(port), "--no-access-log", "--log-level", "warning"],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "text"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the API did not start:\n{log.read_text()}")
                time.sleep(0.2)
            yield base
        finally:
            proc.terminate()
            proc.wait(10)


def seed(database_url: str, owners: int, per_owner: int) -> dict[str, Any]:
    """Keys for `owners` streaming owners and one other; their queued experiments."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from core.keys import create_key
    from core.spec import ExperimentCreate
    from core.tables import Experiment, utcnow

    spec = ExperimentCreate.model_validate({"train": {"steps": 5}}).model_dump(mode="json")
    engine = create_engine(database_url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    out: dict[str, Any] = {"streams": []}
    with sessions() as s:
        for i in range(owners + 1):
            owner = f"owner{i}"
            key = create_key(s, f"bench-{owner}", owner)[1]
            rows = [
                Experiment(
                    spec=spec, status="queued", owner=owner, total_steps=5, enqueued_at=utcnow()
                )
                for _ in range(per_owner if i < owners else 1)
            ]
            s.add_all(rows)
            s.commit()
            if i < owners:
                out["streams"] += [(key, r.id) for r in rows]
            else:
                out["other"] = (key, rows[0].id)
    engine.dispose()
    return out


async def hold_stream(
    client: httpx.AsyncClient, base: str, key: str, exp_id: str, opened: asyncio.Event, stop
) -> int:
    """Opens one stream and reads it until `stop`; returns its status code."""
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream(
        "GET", f"{base}/v1/experiments/{exp_id}/stream", headers=headers
    ) as resp:
        if resp.status_code != 200:
            opened.set()
            return resp.status_code
        async for line in resp.aiter_lines():
            if line.startswith("event: status"):
                opened.set()
            if stop.is_set():
                break
    return 200


async def first_stream_code(client: httpx.AsyncClient, base: str, key: str, exp_id: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream(
        "GET", f"{base}/v1/experiments/{exp_id}/stream", headers=headers
    ) as resp:
        return resp.status_code


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def measure(base: str, seeded: dict[str, Any], samples: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=60, limits=limits) as streams:
        opened = [asyncio.Event() for _ in seeded["streams"]]
        tasks = [
            asyncio.create_task(hold_stream(streams, base, key, exp_id, ev, stop))
            for (key, exp_id), ev in zip(seeded["streams"], opened, strict=True)
        ]
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in opened)), 120)
        open_s = time.perf_counter() - t0
        key, exp_id = seeded["other"]
        timings: dict[str, list[float]] = {"healthz": [], "get": []}
        codes: dict[str, set[int]] = {"healthz": set(), "get": set()}
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as other:
            for _ in range(samples):
                for name, path in (("healthz", "/healthz"), ("get", f"/v1/experiments/{exp_id}")):
                    t = time.perf_counter()
                    resp = await other.get(path)
                    timings[name].append(time.perf_counter() - t)
                    codes[name].add(resp.status_code)
                await asyncio.sleep(0.01)
        # one stream more for a key that has its MAX_STREAMS_PER_OWNER open: refused
        first_key, first_id = seeded["streams"][0]
        over = await first_stream_code(streams, base, first_key, first_id)
        stop.set()
        for task in tasks:
            task.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        # closed streams give their slots back: the same key opens one again
        again, deadline = 0, time.monotonic() + 10
        while again != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            again = await first_stream_code(streams, base, first_key, first_id)
    refused = sum(1 for d in done if isinstance(d, int) and d != 200)
    return {
        "streams": len(seeded["streams"]) - refused,
        "over_limit_code": over,
        "after_close_code": again,
        "open_s": open_s,
        "codes": {k: sorted(v) for k, v in codes.items()},
        **{
            f"{name}_{q}_ms": 1000 * f(ts)
            for name, ts in timings.items()
            for q, f in (
                ("p50", statistics.median),
                ("p99", lambda xs: percentile(xs, 0.99)),
                ("max", max),
            )
        },
    }


def idle_in_transaction(database_url: str) -> int:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(database_url).database
    engine = create_engine(PG_ADMIN)
    with engine.connect() as conn:
        n = conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :d "
                "AND state = 'idle in transaction'"
            ),
            {"d": name},
        )
    engine.dispose()
    return int(n)


def run_on(url: str, owners: int, per_owner: int, samples: int, folder: Path) -> dict[str, Any]:
    """The measurement on a migrated database at `url`."""
    seeded = seed(url, owners, per_owner)
    env = {
        "DATABASE_URL": url,
        "BROKER_URL": f"sqla+sqlite:///{folder}/broker.sqlite",
        "MAX_STREAMS_PER_OWNER": str(per_owner),
    }
    with api_process(env, folder / "api.log") as base:
        result = asyncio.run(measure(base, seeded, samples))
        if url.startswith("postgresql"):
            result["idle_in_transaction"] = idle_in_transaction(url)
    return result


def run(owners: int, per_owner: int, samples: int, pg: bool, folder: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from service import fresh_database

    with fresh_database(PG_ADMIN if pg else None, folder) as url:
        return run_on(url, owners, per_owner, samples, folder)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--owners", type=int, default=10)
    parser.add_argument("--per-owner", type=int, default=20)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--pg", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = run(args.owners, args.per_owner, args.samples, args.pg, Path(tmp))
    print(
        f"backend: {'postgres' if args.pg else 'sqlite'}; open streams: {r['streams']} "
        f"(opened in {r['open_s']:.1f} s); status codes {r['codes']}; one stream over a "
        f"key's limit: {r['over_limit_code']}, after its streams closed: {r['after_close_code']}"
    )
    for name in ("healthz", "get"):
        print(
            f"{name:8} p50 {r[f'{name}_p50_ms']:6.1f} ms  p99 {r[f'{name}_p99_ms']:6.1f} ms  "
            f"max {r[f'{name}_max_ms']:6.1f} ms"
        )
    if "idle_in_transaction" in r:
        print(f"API connections idle in transaction: {r['idle_in_transaction']}")


if __name__ == "__main__":
    main()
