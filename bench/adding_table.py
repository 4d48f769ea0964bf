"""The adding problem at T in {50, 100, 200}: tanh RNN vs IRNN (relu + identity W_hh) vs LSTM
vs GRU, through the service's own worker.train.train(), as a markdown table.

    .venv/bin/python bench/adding_table.py            # about 10 minutes on 2 CPU cores
    .venv/bin/python bench/adding_table.py --steps 300 --lengths 50   # a quick look

Every run has the same budget and settings (seed 0, hidden 64, batch 64, Adam, clip by norm 1),
so the table compares the cells, not their tuning. Columns: the final and best validation MSE
(a fixed held-out batch of 256) against the 1/6 = 0.167 baseline of always answering 1.0; the
step (0-based, validation every `--val-every` steps) at which validation first beat the
baseline and first counted as solved (MSE < 0.01); the diagnosis verdict where
core/diagnosis.py exists, n/a otherwise."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CELLS: dict[str, dict[str, Any]] = {
    "tanh RNN": {"cell": "rnn", "activation": "tanh", "init": {"recurrent": "orthogonal"}},
    "IRNN": {"cell": "rnn", "activation": "relu", "init": {"recurrent": "identity"}},
    "LSTM": {"cell": "lstm"},
    "GRU": {"cell": "gru"},
}
SOLVED = 0.01


def spec_dict(cell: str, t: int, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": f"{cell}, adding, T={t}",
        "seed": args.seed,
        "task": {"name": "adding", "seq_len": t},
        "model": {**CELLS[cell], "hidden_size": args.hidden},
        "train": {
            "steps": args.steps,
            "batch_size": args.batch,
            "optimizer": {"name": "adam", "lr": args.lr},
            "clip": {"mode": "norm", "max_norm": 1.0},
            "device": "cpu",
        },
        "instrument": {"every": args.instrument_every, "val_every": args.val_every},
    }


def verdict(spec: Any, result: Any) -> str:
    """The diagnosis, called as the worker's runner calls it (summary, normalised spec as a
    mapping, status); n/a where core/diagnosis.py is missing or fails."""
    try:
        from core.diagnosis import diagnose
    except ImportError:
        return "n/a"
    try:
        d = diagnose(result.summary, spec.model_dump(mode="json"), result.status)
    except Exception as exc:
        return f"n/a ({type(exc).__name__})"
    return str(d.get("verdict", "n/a")) if isinstance(d, dict) else str(d)


def run_one(job: tuple[str, int, argparse.Namespace]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(job[2].threads)
    from core.spec import ExperimentCreate
    from worker.instruments import default_instruments
    from worker.train import train

    cell, t, args = job
    spec = ExperimentCreate.model_validate(spec_dict(cell, t, args))
    t0 = time.perf_counter()
    result = train(spec, default_instruments(spec))
    s = result.summary
    return {
        "cell": cell,
        "T": t,
        "status": result.status,
        "final": s["final_val_loss"],
        "best": s["best_val_loss"],
        "beat": s["beat_baseline_at_step"],
        "solved": s["solved_at_step"],
        "verdict": verdict(spec, result),
        "wall": time.perf_counter() - t0,
    }


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}" if v >= 1e-3 else f"{v:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--instrument-every", type=int, default=100)
    ap.add_argument("--procs", type=int, default=2, help="runs in parallel")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = ap.parse_args()

    import torch

    # Longest runs first, so the two processes finish together.
    jobs = [(c, t, args) for t in sorted(args.lengths, reverse=True) for c in args.cells]
    print(
        f"adding problem through worker.train.train(): steps={args.steps} hidden={args.hidden} "
        f"batch={args.batch} adam lr={args.lr} clip norm 1.0 seed={args.seed}, "
        f"{args.procs} processes x {args.threads} thread(s), torch {torch.__version__}",
        flush=True,
    )
    t0 = time.perf_counter()
    if args.procs > 1:
        with mp.get_context("spawn").Pool(args.procs) as pool:
            rows = pool.map(run_one, jobs, chunksize=1)
    else:
        rows = [run_one(j) for j in jobs]
    rows.sort(key=lambda r: (r["T"], list(CELLS).index(r["cell"])))

    print()
    print(
        "| cell | T | final val MSE | best val MSE | beat 0.167 at step | solved (<0.01) at step "
        "| diagnosis | status | wall s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |")
    for r in rows:
        beat = "never" if r["beat"] is None else str(r["beat"])
        solved = "not solved" if r["solved"] is None else str(r["solved"])
        print(
            f"| {r['cell']} | {r['T']} | {fmt(r['final'])} | {fmt(r['best'])} | {beat} | "
            f"{solved} | {r['verdict']} | {r['status']} | {r['wall']:.0f} |"
        )
    print()
    solved = [f"{r['cell']} T={r['T']}" for r in rows if r["solved"] is not None]
    beat = [
        f"{r['cell']} T={r['T']}" for r in rows if r["solved"] is None and r["beat"] is not None
    ]
    neither = [f"{r['cell']} T={r['T']}" for r in rows if r["beat"] is None]
    print(f"solved (val MSE < {SOLVED}): {', '.join(solved) or 'none'}")
    print(f"beat the 0.167 baseline but not solved: {', '.join(beat) or 'none'}")
    print(f"never beat the baseline: {', '.join(neither) or 'none'}")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
