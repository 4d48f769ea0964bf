"""Issue 17's outage check, the long version of tests/gradlab/test_watch_service.py: a watched
loop (LSTM 2 x 128, batch 64, T = 100, every = 10, 1 thread) against uvicorn on loopback
(fresh SQLite); the API is stopped for --down seconds in the middle of the run and started
again on the same port. Prints the loop's ms/step before, during and after, and whether every
batch and every loss point arrived once.

    .venv/bin/python bench/watch_outage.py [--down 60 --steps-before 30 --steps-after 30]"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gradlab  # noqa: E402
from bench.watch_overhead import make_net  # noqa: E402
from tests.serving import free_port, uvicorn  # noqa: E402


def steps(net, opt, run, n: int, gen) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        x = torch.randn(100, 64, 32, generator=gen)
        y = torch.randn(64, 1, generator=gen)
        out, _ = net.lstm(x)
        loss = torch.nn.functional.mse_loss(net.head(out[-1]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.log(loss=loss)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--down", type=float, default=60.0)
    ap.add_argument("--steps-before", type=int, default=30)
    ap.add_argument("--steps-after", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        from core.keys import create_key
        from core.migrate import upgrade

        db = f"sqlite:///{tmp}/gradlab.sqlite"
        upgrade(db)
        env = {"DATABASE_URL": db, "BROKER_URL": f"sqla+sqlite:///{tmp}/broker.sqlite"}
        os.environ.update(env)
        from core.db import get_sessionmaker

        with get_sessionmaker()() as s:
            key = create_key(s, "bench", "bench")[1]
        port, log = free_port(), Path(tmp) / "uvicorn.log"
        net, opt = make_net(0)
        gen = torch.Generator().manual_seed(1)
        with uvicorn(env, log, port) as base:
            run = gradlab.watch(net, every=10, url=base, key=key, spool_dir=tmp)
            before = steps(net, opt, run, args.steps_before, gen)
        during: list[float] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.down:
            during += steps(net, opt, run, 1, gen)
        spooled = run.stats["spooled"]
        with uvicorn(env, log, port):
            after = steps(net, opt, run, args.steps_after, gen)
            done = run.finish()
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as h:
                metrics = h.get(f"/v1/experiments/{run.id}/metrics").json()
    total = len(before) + len(during) + len(after)
    print(f"API down {args.down:.0f} s; {total} steps; spooled {spooled} batches while down")
    for name, t in (("before", before), ("during", during), ("after", after)):
        print(f"  {name:6s}: median {statistics.median(t):7.1f} ms/step, max {max(t):7.1f}")
    print(f"every loss point once, in order: {metrics['steps'] == list(range(total))}")
    print(f"uploads: {run.stats}; status {done and done['status']}")


if __name__ == "__main__":
    main()
