"""Where an instrumented training step's time goes: wall ms per step of train() (the median of
its steps 2..n-2, its `should_stop` callback as the clock) with no step instrumented, every
step instrumented but no optional instrument, the temporal profile only (the closed-form
route), and every instrument (the first step, a dynamics step, printed apart); the plain
fused loop beside them, interleaved. LSTM 2 x 128 unless --cell/--layers say otherwise,
T = 100, batch 64, 1 thread unless --threads, glibc's freed memory kept (as the worker runs).

    .venv/bin/python bench/step_parts.py [--reps 3] [--cell gru --layers 1 --threads 2]"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.spec import OPTIONAL_INSTRUMENTS, ExperimentCreate
from worker.allocator import keep_freed_memory
from worker.datasets import make_task
from worker.instruments import default_instruments
from worker.train import train

STEPS = 24
CONFIGS = {  # name: (optional instruments, instrument.every)
    "train, not instrumented": ([], 1000),
    "instrumented, no optional": ([], 1),
    "temporal only": (["temporal"], 1),
    "every instrument": (list(OPTIONAL_INSTRUMENTS), 1),
}


FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
CELL, LAYERS = "lstm", 2  # set from the command line


def spec(on: list[str], every: int) -> ExperimentCreate:
    return ExperimentCreate.model_validate(
        {
            "task": {"name": "adding", "seq_len": 100},
            "model": {"cell": CELL, "hidden_size": 128, "num_layers": LAYERS},
            "train": {"steps": STEPS, "batch_size": 64, "device": "cpu"},
            "instrument": {"every": every, "val_every": 10**5, "on": on, "dynamics_every": 1000},
        }
    )


def gradlab_steps(s: ExperimentCreate) -> list[float]:
    stamps: list[float] = []

    def stop() -> bool:
        stamps.append(time.perf_counter())
        return False

    train(s, default_instruments(s), should_stop=stop, on_flush=lambda batch, step: None)
    return [1e3 * (b - a) for a, b in zip(stamps, stamps[1:], strict=False)]


def plain_steps() -> list[float]:
    task = make_task(spec([], 1000).task)
    rnn = FUSED[CELL](task.input_size, 128, num_layers=LAYERS)
    head = nn.Linear(128, task.output_size)
    params = [*rnn.parameters(), *head.parameters()]
    opt, gen = torch.optim.Adam(params, lr=1e-3), torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        t = time.perf_counter()
        x, y = task.batch(64, gen)
        loss = task.loss(head(rnn(x)[0][-1]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        out.append(1e3 * (time.perf_counter() - t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    global CELL, LAYERS
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cell", choices=sorted(FUSED), default=CELL)
    ap.add_argument("--layers", type=int, default=LAYERS)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    reps, CELL, LAYERS = a.reps, a.cell, a.layers
    torch.set_num_threads(a.threads)
    print(f"{CELL} {LAYERS} x 128, T = 100, batch 64, {a.threads} thread(s)")
    assert keep_freed_memory(), "glibc did not take the allocator settings"
    got: dict[str, list[float]] = {k: [] for k in ["plain", *CONFIGS, "first step (dynamics)"]}
    for _ in range(reps):
        got["plain"].append(statistics.median(plain_steps()[2:-1]))
        for name, (on, every) in CONFIGS.items():
            steps = gradlab_steps(spec(on, every))
            got[name].append(statistics.median(steps[2:-1]))
            if name == "every instrument":
                got["first step (dynamics)"].append(steps[0])
    for name, values in got.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:>26}: {statistics.median(values):7.1f} ms a step   ({runs})")


if __name__ == "__main__":
    main()
