"""An LSTM reads scikit-learn's 8x8 digits pixel by pixel (T = 64, one pixel per step)
through the service's own worker.train.train(), and reports its validation accuracy on the
held-out split (359 images) against chance (10 %).

    .venv/bin/python bench/digits_lstm.py                 # a few minutes on 2 CPU cores
    .venv/bin/python bench/digits_lstm.py --permuted      # the fixed pixel permutation"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--permuted", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from core.spec import ExperimentCreate
    from worker.instruments import default_instruments
    from worker.train import train

    spec = ExperimentCreate.model_validate(
        {
            "name": "lstm, digits pixel by pixel",
            "seed": args.seed,
            "task": {"name": "digits", "read": "pixels", "permuted": args.permuted},
            "model": {"cell": "lstm", "hidden_size": args.hidden},
            "train": {
                "steps": args.steps,
                "batch_size": args.batch,
                "optimizer": {"name": "adam", "lr": args.lr},
                "schedule": {"name": "cosine"},
                "clip": {"mode": "norm", "max_norm": 1.0},
                "device": "cpu",
            },
            "instrument": {"every": 100, "val_every": 100},
        }
    )
    print(
        f"digits {'permuted ' if args.permuted else ''}pixel by pixel (T=64), LSTM hidden "
        f"{args.hidden}, {args.steps} steps x batch {args.batch}, adam lr {args.lr} cosine, "
        f"clip norm 1.0, seed {args.seed}, torch {torch.__version__}",
        flush=True,
    )
    t0 = time.perf_counter()
    result = train(spec, default_instruments(spec))
    wall = time.perf_counter() - t0
    s = result.summary
    steps, acc = result.batch.series["val_accuracy"]
    print("step  val_accuracy")
    for k, a in zip(steps, acc[:, 0], strict=True):
        print(f"{k:5d}  {a:.3f}")
    print(
        f"status {result.status}; final validation accuracy {s['accuracy']:.3f} "
        f"(chance 0.100), best validation loss {s['best_val_loss']:.3f} "
        f"(uniform guess {s['baseline_loss']:.3f}); solved (accuracy >= 0.9) at step "
        f"{s['solved_at_step']}; {wall:.0f} s"
    )


if __name__ == "__main__":
    main()
