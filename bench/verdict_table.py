"""A built-in study re-run small through train() (no service), one torch thread, with the
verdict and the outcome beside each other: the table for the README.

    .venv/bin/python bench/verdict_table.py [adding-mitigations|copy-mitigations|flossing]
        [--steps 400] [--hidden 32] [--lengths 25,50] [--seeds 0]

Reduced from the preset (its steps, hidden size, lengths and seeds are overridden by the
flags; everything else is the preset's) so that it runs in minutes on a 2-core machine.
lambda_1: the top Lyapunov exponent of layer 0 (per step), the median over the diagnosis
window (the last 5 instrumented steps on which the lyapunov instrument ran)."""

import argparse
import time

import torch

from core.diagnosis import diagnose
from core.presets import PRESETS
from core.spec import SweepCreate
from core.sweeps import expand
from worker.instruments import default_instruments
from worker.train import train


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("preset", nargs="?", default="adding-mitigations")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--lengths", default="25,50")
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()
    torch.set_num_threads(1)
    p = PRESETS[args.preset]
    base = {**p["base"], "model": {**p["base"].get("model", {}), "hidden_size": args.hidden}}
    base["train"] = {**base["train"], "steps": args.steps, "device": "cpu"}
    grid = {**p["grid"], "task.seq_len": [int(v) for v in args.lengths.split(",")]}
    seeds = [int(v) for v in args.seeds.split(",")]
    req = SweepCreate(base=base, grid=grid, seeds=seeds)
    print(
        f"{args.preset}, reduced: {args.steps} steps, hidden {args.hidden}, "
        f"T in {grid['task.seq_len']}, seeds {seeds}, 1 thread"
    )
    print()
    print(
        "| variant | T | outcome | best val loss | val baseline | accuracy | lambda_1 | verdict "
        "| why |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |")
    t0 = time.perf_counter()
    for params, spec in expand(req, float("inf")):
        result = train(spec, default_instruments(spec))
        d = diagnose(result.summary, spec.model_dump(mode="json"), result.status)
        s, o = result.summary, d["outcome"]
        lam = d["layers"][0]["lambda_1"] if d["layers"] else None
        print(
            f"| {params['variant']} | {params['task.seq_len']} | {o['result']} | "
            f"{fmt(s['best_val_loss'])} | {fmt(s.get('baseline_loss_val'))} | "
            f"{fmt(s.get('accuracy'))} | {fmt(lam)} | {d['verdict']} | {d['reason']} |",
            flush=True,
        )
    print()
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
