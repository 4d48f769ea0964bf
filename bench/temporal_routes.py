"""Cost of one temporal profile by each route, next to one ordinary training step.

    .venv/bin/python bench/temporal_routes.py [--seq-len 100 500] [--hidden 128] [--threads 1]

Routes: `closed` (the adjoint recursion with closed-form Jacobian products, what the
instrument uses) and `unrolled` (recompute the layer step by step under autograd and take the
gradient w.r.t. every h_t node: the cost of the retain_grad reference). Medians of --reps."""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from models import RecurrentNet, init_recurrent_net
from worker.instruments.temporal import profiles, retain


def timed(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(cell: str, t: int, hidden: int, batch: int, reps: int) -> dict[str, float]:
    torch.manual_seed(0)
    net = RecurrentNet(2, 1, cell=cell, hidden_size=hidden)
    init_recurrent_net(net, "orthogonal", "xavier_uniform", 1.0)
    opt = torch.optim.Adam(net.parameters())
    x, y = torch.rand(t, batch, 2), torch.rand(batch, 1)

    def step() -> None:
        opt.zero_grad()
        F.mse_loss(net.head(net(x).top[-1]), y).backward()
        opt.step()

    out = net(x)
    retain(out)
    F.mse_loss(net.head(out.top[-1]), y).backward()
    res = {"step": timed(step, reps)}
    for m in ("closed", "unrolled"):
        res[m] = timed(lambda m=m: profiles(net.rnn, out, m), reps)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads {a.threads}, H={a.hidden} B={a.batch}")
    print(f"{'cell':<5} {'T':>5} {'train step ms':>14} {'closed ms':>10} {'unrolled ms':>12}")
    for cell in ("rnn", "lstm", "gru"):
        for t in a.seq_len:
            r = measure(cell, t, a.hidden, a.batch, a.reps)
            row = f"{r['step']:>14.1f} {r['closed']:>10.1f} {r['unrolled']:>12.1f}"
            print(f"{cell:<5} {t:>5} {row}")


if __name__ == "__main__":
    main()
