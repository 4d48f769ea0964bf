"""Issue 17's overhead floor: a hand-written loop on torch's fused nn.LSTM(32, 128,
num_layers=2) (batch 64, T = 100, Adam, clip by norm, 1 thread), with and without
`gradlab.watch` (every = 10, every instrument on, uploads on to a local service: uvicorn on
loopback over a fresh SQLite file), interleaved in one run: blocks of each in turn, the
median block of each compared. Also prints the CPU time ratio (the upload thread included).

    .venv/bin/python bench/watch_overhead.py [--steps 50 --repeats 5]"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gradlab  # noqa: E402
from tests.serving import uvicorn  # noqa: E402

T, BATCH, IN, HIDDEN, LAYERS = 100, 64, 32, 128, 2


def make_net(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    net = nn.Module()
    net.lstm = nn.LSTM(IN, HIDDEN, num_layers=LAYERS)
    net.head = nn.Linear(HIDDEN, 1)
    return net, torch.optim.Adam(net.parameters(), lr=1e-3)


def block(net: nn.Module, opt: torch.optim.Optimizer, steps: int, run=None) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(1)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        x = torch.randn(T, BATCH, IN, generator=gen)
        y = torch.randn(BATCH, 1, generator=gen)
        out, _ = net.lstm(x)
        loss = nn.functional.mse_loss(net.head(out[-1]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if run is not None:
            run.log(loss=loss)
    return (
        (time.perf_counter() - wall) / steps * 1e3,
        (time.process_time() - cpu) / steps * 1e3,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50, help="steps per block")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        import os

        db = f"sqlite:///{tmp}/gradlab.sqlite"
        env = {"DATABASE_URL": db, "BROKER_URL": f"sqla+sqlite:///{tmp}/broker.sqlite"}
        os.environ.update(env)  # before anything reads the settings
        from core.db import get_sessionmaker
        from core.keys import create_key
        from core.migrate import upgrade

        upgrade(db)

        with get_sessionmaker()() as s:
            key = create_key(s, "bench", "bench")[1]
        with uvicorn(env, Path(tmp) / "uvicorn.log") as base:
            plain_net, plain_opt = make_net(0)
            net, opt = make_net(0)
            run = gradlab.watch(net, name="watch overhead", every=10, url=base, key=key)
            block(plain_net, plain_opt, 5)  # warm-up
            block(net, opt, 5, run)
            plain, watched = [], []
            for _ in range(args.repeats):
                plain.append(block(plain_net, plain_opt, args.steps))
                watched.append(block(net, opt, args.steps, run))
            done = run.finish()
    pw, ww = statistics.median(p[0] for p in plain), statistics.median(w[0] for w in watched)
    pc, wc = statistics.median(p[1] for p in plain), statistics.median(w[1] for w in watched)
    print(
        f"config: lstm {LAYERS} x {HIDDEN}, batch {BATCH}, T={T}, every=10, {args.steps} steps x "
        f"{args.repeats} interleaved blocks, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread"
    )
    print(f"plain loop        : {pw:8.2f} ms/step (CPU {pc:.2f})")
    print(f"with gradlab.watch: {ww:8.2f} ms/step (CPU {wc:.2f})")
    print(f"ratio             : {ww / pw:8.3f} wall, {wc / pc:.3f} CPU")
    pairs = [(round(p[0], 1), round(w[0], 1)) for p, w in zip(plain, watched, strict=True)]
    print(f"blocks (plain, watched) ms/step: {pairs}")
    verdict = done and done["diagnosis"]["verdict"]
    print(f"uploads: {run.stats}; run {done and done['status']}, verdict {verdict}")


if __name__ == "__main__":
    main()
