"""On a GPU: the plain fused cuDNN loop (`nn.LSTM(I, H, num_layers=L)` etc. written by hand)
against gradlab's train() for each cell, and several experiments at once on the one GPU
(separate processes) against the same experiments one after another.

    .venv/bin/python bench/gpu.py [--layers 2 --hidden 256 --batch 256 --seq-len 200]
    .venv/bin/python bench/gpu.py --smoke          # tiny sizes: checks the script itself

Without CUDA it says so, skips the GPU measurements and runs the same code on the CPU at the
--smoke sizes (so the script is tested where no GPU is lent). Timings synchronise the
device before reading the clock; each figure is the median of --repeats interleaved runs."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from core.spec import OPTIONAL_INSTRUMENTS, ExperimentCreate  # noqa: E402
from worker.datasets import make_task  # noqa: E402
from worker.instruments import default_instruments  # noqa: E402
from worker.train import configure_cuda, train  # noqa: E402

FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def make_spec(a, cell: str, device: str, instruments: bool) -> ExperimentCreate:
    return ExperimentCreate.model_validate(
        {
            "task": {"name": "adding", "seq_len": a.seq_len},
            "model": {"cell": cell, "hidden_size": a.hidden, "num_layers": a.layers},
            "train": {"steps": a.steps, "batch_size": a.batch, "device": device},
            "instrument": {
                "every": 10,
                "val_every": 10**5,
                "on": list(OPTIONAL_INSTRUMENTS) if instruments else [],
            },
        }
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(spec: ExperimentCreate) -> float:
    """ms per step of the hand-written loop on torch's multi-layer module (cuDNN on a GPU):
    data drawn on the host and copied, as a researcher's DataLoader-free loop does."""
    device = torch.device(spec.train.device)
    configure_cuda(device)
    torch.manual_seed(spec.seed)
    task = make_task(spec.task)
    m = spec.model
    rnn = FUSED[m.cell](task.input_size, m.hidden_size, num_layers=m.num_layers).to(device)
    head = nn.Linear(m.hidden_size, task.output_size).to(device)
    params = [*rnn.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=spec.train.optimizer.lr)
    gen = torch.Generator().manual_seed(spec.seed)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(spec.train.steps):
        x, y = task.batch(spec.train.batch_size, gen)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = task.loss(head(rnn(x)[0][-1]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.train.clip.max_norm)
        opt.step()
    sync(device)
    return (time.perf_counter() - t0) / spec.train.steps * 1e3


def gradlab_loop(spec: ExperimentCreate) -> float:
    result = train(spec, default_instruments(spec), on_flush=lambda batch, step: None)
    return 1e3 / result.summary["steps_per_second"]


def one_process(spec_json: str) -> None:
    """--child: one experiment through train(), its ms/step printed as JSON."""
    spec = ExperimentCreate.model_validate_json(spec_json)
    print(json.dumps({"ms_per_step": gradlab_loop(spec)}))


def concurrent(spec: ExperimentCreate, n: int) -> tuple[float, float]:
    """(wall s for n processes started together, wall s for n one after another)."""
    cmd = [sys.executable, __file__, "--child", spec.model_dump_json()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, cwd=ROOT) for _ in range(n)]
    for p in procs:
        p.communicate()
        assert p.returncode == 0
    together = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n):
        subprocess.run(cmd, check=True, stdout=subprocess.PIPE, env=env, cwd=ROOT)
    return together, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=200)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrent", nargs="+", type=int, default=[2, 4])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (the CPU check)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        one_process(a.child)
        return
    cuda = torch.cuda.is_available()
    if not cuda:
        print("no CUDA device: the GPU measurements are skipped; the same code runs on the")
        print("CPU at smoke sizes so the script itself is checked (these are not GPU figures)")
        a.smoke = True
    if a.smoke:
        a.hidden, a.batch, a.seq_len, a.steps, a.repeats = 16, 8, 12, 12, 1
        a.concurrent = [2]
    device = "cuda" if cuda else "cpu"
    torch.set_num_threads(1)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(
        f"device {name}, torch {torch.__version__}, cuDNN "
        f"{torch.backends.cudnn.version() if cuda else '-'}, {a.layers} layers x {a.hidden}, "
        f"batch {a.batch}, adding T={a.seq_len}, {a.steps} steps, median of {a.repeats}"
    )
    print("| cell | plain fused ms/step | train() none | train() default | none x | default x |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cell in a.cells:
        none, full = (make_spec(a, cell, device, on) for on in (False, True))
        plain_loop(none), gradlab_loop(none)  # warm-up: cuDNN autotuning, allocator
        got: dict[str, list[float]] = {"p": [], "n": [], "d": []}
        for _ in range(a.repeats):
            got["p"].append(plain_loop(none))
            got["n"].append(gradlab_loop(none))
            got["d"].append(gradlab_loop(full))
        p, n, d = (statistics.median(got[k]) for k in "pnd")
        print(f"| {cell} | {p:.2f} | {n:.2f} | {d:.2f} | {n / p:.3f} | {d / p:.3f} |", flush=True)
    print("\nseveral experiments at once on one device (processes), default instruments:")
    print("| cell | n | together s | one after another s | throughput gain |")
    print("| --- | --- | --- | --- | --- |")
    for cell in a.cells:
        spec = make_spec(a, cell, device, True)
        for n in a.concurrent:
            together, serial = concurrent(spec, n)
            print(f"| {cell} | {n} | {together:.1f} | {serial:.1f} | {serial / together:.2f}x |")


if __name__ == "__main__":
    main()
