"""CPU time of each instrument's hooks and of the forward routes, per training step, in one
run of train() (every instrument on unless --on), 1 torch thread.

    .venv/bin/python bench/instrument_costs.py [--cell lstm --every 1 --steps 20]

With --every 1 every step is instrumented: the figures are then what an instrumented step
costs. The "forward fused" row is the final validation (train() validates at its last step)."""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.spec import ExperimentCreate
from worker import train as train_mod
from worker.instruments import default_instruments

HOOKS = ("before_backward", "after_backward", "after_step")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--on", nargs="*", default=None, help="optional instruments (default: all)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    instrument = {"every": a.every, "val_every": 10**5}
    if a.on is not None:
        instrument["on"] = a.on
    spec = ExperimentCreate.model_validate(
        {
            "model": {"cell": a.cell, "hidden_size": 128, "num_layers": a.layers},
            "task": {"name": "adding", "seq_len": a.seq_len},
            "train": {"steps": a.steps, "batch_size": 64, "device": "cpu"},
            "instrument": instrument,
        }
    )
    instruments = default_instruments(spec)
    cost: dict[tuple[str, str], float] = collections.defaultdict(float)

    def timed(key: tuple[str, str], fn):
        def wrapper(*args, **kwargs):
            c = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                cost[key] += time.process_time() - c

        return wrapper

    for ins in instruments:
        for hook in HOOKS:
            setattr(ins, hook, timed((ins.name, hook), getattr(ins, hook)))
    forward = train_mod.forward

    def timed_forward(run, x, per_layer=True, closed=False):
        route = ("per layer" if per_layer else "fused") + (", closed" if closed else "")
        return timed(("forward", route), forward)(run, x, per_layer=per_layer, closed=closed)

    train_mod.forward = timed_forward
    c0 = time.process_time()
    train_mod.train(spec, instruments)
    total = time.process_time() - c0
    print(
        f"{a.cell} {a.layers} x 128, T={a.seq_len}, batch 64, every={a.every}, {a.steps} steps, "
        f"on: {', '.join(spec.instrument.on)}; CPU {1e3 * total / a.steps:.1f} ms/step in all"
    )
    for (name, hook), seconds in sorted(cost.items(), key=lambda kv: -kv[1]):
        if seconds / a.steps > 5e-5:
            print(f"{name:>14} {hook:>16} {1e3 * seconds / a.steps:8.1f} ms/step")


if __name__ == "__main__":
    main()
