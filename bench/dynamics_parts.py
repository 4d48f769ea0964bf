"""Where one layer's dynamics step goes (the Lyapunov instrument's parts and the spectrum's
radius), wall ms, median of --reps, for one layer of each cell (hidden 128, batch 64,
T = 100, its own fused forward's outputs), on --threads torch threads. Beside them, the lag
products' SVDs (7 of (S, S), S = 256 for an lstm's (h, c)) one after another against two
Python threads, the overlap LAPACK's one-threaded SVD would allow.

    .venv/bin/python bench/dynamics_parts.py [--threads 2 --reps 5]"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradlab.instruments.spectrum import block_radius
from worker.instruments import lyapunov
from worker.instruments.jacobians import step_jacobians

FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
T, B, H = 100, 64, 128


def wall_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def layer_parts(cell: str, reps: int, lags: list[int]) -> dict[str, float]:
    torch.manual_seed(0)
    layer, x = FUSED[cell](H, H), torch.randn(T, B, H)
    with torch.no_grad():
        h = layer(x)[0]
    size = 2 * H if cell == "lstm" else H
    jac = step_jacobians(layer, x, h)
    parts = {
        "jacobians": lambda: step_jacobians(layer, x, h),
        "exponents": lambda: lyapunov.exponents(jac, T, size, 8),
        "conditioning": lambda: lyapunov.conditioning(jac, T, lags),
        "radius": lambda: block_radius(layer.weight_hh_l0),
    }
    return {name: wall_ms(fn, reps) for name, fn in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} thread(s), one layer {H} wide, T = {T}, B = {B}")
    lags = lyapunov.default_lags(T)
    for cell in FUSED:
        got = layer_parts(cell, a.reps, lags)
        shown = ", ".join(f"{name} {ms:.1f}" for name, ms in got.items())
        print(f"  {cell}: {shown}; in all {sum(got.values()):.1f} ms")
    products = torch.randn(len(lags), 2 * H, 2 * H)
    pool = ThreadPoolExecutor(2)
    serial = wall_ms(lambda: [torch.linalg.svdvals(p) for p in products], a.reps)
    pooled = wall_ms(lambda: list(pool.map(torch.linalg.svdvals, products)), a.reps)
    n = 2 * H
    print(f"  {len(lags)} SVDs of ({n}, {n}): in turn {serial:.1f} ms, two threads {pooled:.1f}")


if __name__ == "__main__":
    main()
