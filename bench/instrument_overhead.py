"""Overhead of the instruments: gradlab's train() with every instrument on (loss, gradient
norms, temporal profile, spectrum, saturation, update ratio, clipping, NaN guard) and
instrument.every = 10, vs. a plain PyTorch loop on the same model, the same batches, the same
optimiser and clipping, and the same final validation. rnn, lstm, gru at T = 100 and 500.

    .venv/bin/python bench/instrument_overhead.py [--threads 1] [--repeats 3]

Each run is timed whole (model build, training, validation), by the wall clock and by this
process's CPU time; runs are interleaved (plain, gradlab, plain, ...) and the medians taken.
On a CPU shared with other jobs the wall clock swings by tens of percent from one minute to
the next, while the CPU time (one thread: the work itself) stays steady. Floor: ratio <= 1.15."""

import argparse
import statistics
import time

import torch

from core.spec import ExperimentCreate
from worker.datasets import make_task
from worker.instruments import default_instruments
from worker.train import build_model, train

CONFIGS = [
    ("rnn", 100, 100),
    ("rnn", 500, 40),
    ("lstm", 100, 60),
    ("lstm", 500, 30),
    ("gru", 100, 60),
    ("gru", 500, 30),
]  # (cell, T, steps)


def make_spec(cell: str, t: int, steps: int, hidden: int, batch: int) -> ExperimentCreate:
    return ExperimentCreate.model_validate(
        {
            "task": {"name": "adding", "seq_len": t},
            "model": {"cell": cell, "hidden_size": hidden},
            "train": {"steps": steps, "batch_size": batch, "device": "cpu"},
            "instrument": {"every": 10, "val_every": 10**5},  # validates once, at the end
        }
    )


def timed(fn, spec: ExperimentCreate) -> tuple[float, float]:
    """(wall ms, CPU ms) per training step of fn(spec)."""
    w, c = time.perf_counter(), time.process_time()
    fn(spec)
    n = spec.train.steps
    return (time.perf_counter() - w) / n * 1e3, (time.process_time() - c) / n * 1e3


def plain_loop(spec: ExperimentCreate) -> None:
    """What a researcher writes by hand: forward, loss, backward, clip, step; validate once."""
    torch.manual_seed(spec.seed)
    task = make_task(spec.task)
    net = build_model(spec, task)
    opt = torch.optim.Adam(net.parameters(), lr=spec.train.optimizer.lr)
    gen = torch.Generator().manual_seed(spec.seed)
    vx, vy = task.validation()
    for _ in range(spec.train.steps):
        x, y = task.batch(spec.train.batch_size, gen)
        loss = task.loss(net.head(net(x).top[-1]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), spec.train.clip.max_norm)
        opt.step()
    with torch.no_grad():
        float(task.loss(net.head(net(vx).top[-1]), vy))


def gradlab_loop(spec: ExperimentCreate) -> None:
    ins = default_instruments(spec)
    assert len(ins) == 8, [i.name for i in ins]  # every instrument on
    train(spec, ins, on_flush=lambda batch, step: None)  # drains as the worker does


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(
        f"torch {torch.__version__}, {a.threads} thread(s), hidden {a.hidden}, batch {a.batch}, "
        f"instrument.every 10, median of {a.repeats} interleaved runs"
    )
    print(f"{'':<17}{'--- wall ms/step ---':>27} {'--- CPU ms/step ---':>27}")
    print(f"{'cell':<5} {'T':>4} {'steps':>5} " + f"{'plain':>9} {'gradlab':>9} {'ratio':>7} " * 2)
    worst = [0.0, 0.0]
    for cell, t, steps in CONFIGS:
        if cell not in a.cells:
            continue
        spec = make_spec(cell, t, steps, a.hidden, a.batch)
        plain_loop(make_spec(cell, t, 3, a.hidden, a.batch))  # warm-up
        plain, ours = [], []
        for _ in range(a.repeats):
            plain.append(timed(plain_loop, spec))
            ours.append(timed(gradlab_loop, spec))
        row = f"{cell:<5} {t:>4} {steps:>5} "
        for k in (0, 1):  # wall, CPU
            p = statistics.median(r[k] for r in plain)
            g = statistics.median(r[k] for r in ours)
            row += f"{p:>9.1f} {g:>9.1f} {g / p:>7.3f} "
            worst[k] = max(worst[k], g / p)
        print(row, flush=True)
    print(f"worst ratio: wall {worst[0]:.3f}, CPU {worst[1]:.3f} (floor 1.15)")


if __name__ == "__main__":
    main()
