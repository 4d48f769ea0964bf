"""Peak worker memory of a run against core.spec.estimated_memory, in a fresh process per spec.

Each spec runs in its own interpreter: a warm-up run of the same cell on a tiny shape loads
every code path, then the spec itself runs `train.steps` steps with every instrument on; the
growth of the peak resident set over the resident set after the warm-up is the measured
peak, compared with the estimate (which excludes the interpreter and torch, about
0.4 GB). The peak is VmHWM, reset after the warm-up (Linux; ru_maxrss elsewhere).

    python bench/worker_memory.py            # the table
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import gc, json, resource, sys
import torch
torch.set_num_threads(1)
from core.spec import ExperimentCreate
from worker.instruments import default_instruments
from worker.train import train


def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak():
    # The peak resident set of this process from now on (Linux: writing 5 to clear_refs
    # resets VmHWM). ru_maxrss cannot be reset, and a child forked from a large process
    # (pytest after many tests) starts with its parent's.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status_kib("VmRSS"), lambda: status_kib("VmHWM")
    except OSError:
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak(), peak


spec = ExperimentCreate.model_validate(json.loads(sys.argv[1]))
tiny = spec.model_copy(deep=True)
tiny.train.batch_size, tiny.model.hidden_size = 2, 4
if hasattr(tiny.task, "seq_len"):
    tiny.task = tiny.task.model_copy(update={"seq_len": 4})
train(tiny, default_instruments(tiny))
gc.collect()
base, peak = reset_peak()
train(spec, default_instruments(spec))
print(json.dumps({"base_kib": base, "peak_kib": peak()}))
"""


def measure(spec: dict[str, Any]) -> dict[str, float]:
    """Measured peak growth (bytes) and the estimate for `spec`, in a fresh interpreter."""
    from core.spec import ExperimentCreate, estimated_memory

    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    measured = (got["peak_kib"] - got["base_kib"]) * 1024.0
    return {
        "measured": measured,
        "estimate": float(estimated_memory(ExperimentCreate.model_validate(spec))),
        "base": got["base_kib"] * 1024.0,
    }


def shape(cell: str, t: int, h: int, layers: int, b: int, **over: Any) -> dict[str, Any]:
    return {
        "task": {"name": "adding", "seq_len": t},
        "model": {"cell": cell, "hidden_size": h, "num_layers": layers, **over},
        # Both routes of a step: 0 and 2 instrumented (per layer, the closed-form backward
        # where the layer has one), 1 not (the fused kernel): the peak is the larger one's.
        "train": {"steps": 3, "batch_size": b, "device": "cpu"},
        "instrument": {"every": 2, "val_every": 1},
    }


SHAPES = [
    shape("rnn", 500, 128, 2, 64),
    shape("rnn", 1000, 64, 4, 128),
    shape("lstm", 500, 128, 2, 64),
    shape("lstm", 300, 256, 1, 128),
    shape("gru", 500, 128, 2, 64),
    shape("gru", 1000, 64, 1, 256),
    shape("rnn", 400, 64, 2, 64, activation="sigmoid"),
    shape("lstm", 200, 64, 2, 64, norm="layer"),
]


def main() -> None:
    print(f"{'cell':6} {'T':>5} {'H':>5} {'L':>2} {'B':>4}  measured MB  estimate MB  ratio")
    for spec in SHAPES:
        r = measure(spec)
        m = spec["model"]
        print(
            f"{m['cell'] + ('/' + m.get('norm', '') if m.get('norm') else ''):6} "
            f"{spec['task']['seq_len']:5} {m['hidden_size']:5} {m['num_layers']:2} "
            f"{spec['train']['batch_size']:4}  {r['measured'] / 2**20:11.1f}  "
            f"{r['estimate'] / 2**20:11.1f}  {r['estimate'] / max(r['measured'], 1):5.2f}"
            f"   (base {r['base'] / 2**20:.0f} MB)",
            flush=True,
        )


if __name__ == "__main__":
    main()
