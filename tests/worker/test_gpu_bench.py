"""bench/gpu.py runs where no GPU is: it says so and runs its code on the CPU at smoke sizes."""

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_runs_on_the_cpu_and_says_the_gpu_parts_were_skipped() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--cells", "rnn"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    if not torch.cuda.is_available():
        assert "no CUDA device: the GPU measurements are skipped" in out
    rows = [line for line in out.splitlines() if line.startswith("| rnn |")]
    assert len(rows) == 2  # the loop comparison and the concurrent one
    assert all(float(cell) > 0 for cell in rows[0].strip("|").split("|")[1:4])
