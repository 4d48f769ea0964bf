"""ms per training step of the service's train() (with the backbone's instruments: loss every
step, per-parameter gradient norms every `instrument.every` steps, the NaN/Inf guard) vs. a plain
PyTorch loop on the same model and the same data. Prints the figures and the ratio.

    .venv/bin/python bench/step_overhead.py [--cell lstm --layers 2 --hidden 128 --seq-len 100]
"""

import argparse
import statistics
import time

import torch

from core.spec import ExperimentCreate
from worker.datasets import make_task
from worker.instruments import default_instruments
from worker.train import build_model, train


def plain_loop(spec: ExperimentCreate, steps: int) -> float:
    """The loop a researcher would write by hand: forward, loss, backward, clip, step."""
    torch.manual_seed(spec.seed)
    task = make_task(spec.task)
    net = build_model(spec, task)
    opt = torch.optim.Adam(net.parameters(), lr=spec.train.optimizer.lr)
    gen = torch.Generator().manual_seed(spec.seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = task.batch(spec.train.batch_size, gen)
        out = net(x)
        loss = task.loss(net.head(out.top[-1]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), spec.train.clip.max_norm)
        opt.step()
    return (time.perf_counter() - t0) / steps * 1e3


def service_loop(spec: ExperimentCreate) -> float:
    result = train(spec, default_instruments(spec), on_flush=lambda b, s: None)
    return 1e3 / result.summary["steps_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = ExperimentCreate.model_validate(
        {
            "task": {"name": "adding", "seq_len": args.seq_len},
            "model": {"cell": args.cell, "hidden_size": args.hidden, "num_layers": args.layers},
            "train": {"steps": args.steps, "batch_size": args.batch, "device": "cpu"},
            # The backbone's instruments only (loss, gradient norms, the NaN guard);
            # bench/instrument_overhead.py measures the full set.
            "instrument": {"every": 10, "val_every": 10**5, "on": []},
        }
    )
    plain_loop(spec, 10)  # warm-up: allocator, threads
    plain, service = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        plain.append(plain_loop(spec, args.steps))
        service.append(service_loop(spec))
    p, s = statistics.median(plain), statistics.median(service)
    print(
        f"config: {args.cell}, {args.layers} layers, hidden {args.hidden}, batch {args.batch}, "
        f"T={args.seq_len}, {args.steps} steps x {args.repeats} repeats, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"plain PyTorch loop : {p:8.2f} ms/step")
    print(f"gradlab train()    : {s:8.2f} ms/step")
    print(f"ratio              : {s / p:8.3f}")


if __name__ == "__main__":
    main()
