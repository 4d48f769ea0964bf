"""ms per training step of gradlab's train() against the loop a researcher writes by hand on
torch's fused module (`nn.LSTM(I, H, num_layers=L)` etc. and a linear head: forward, loss,
backward, clip by norm, Adam step), on the same batches, for every cell, 1 and 2 layers,
T = 100 and 500, 1 and 2 torch threads; train() with no optional instrument and with the
default instruments (every one, instrument.every = 10). With --service, the same spec also
goes through the embedded service (a real worker process, SQLite + the SQLAlchemy broker):
its summary.steps_per_second against the plain loop timed just before and just after.

    .venv/bin/python bench/step_overhead.py                       # the whole grid
    .venv/bin/python bench/step_overhead.py --cells lstm --layers 2 --seq-lens 100 --threads 1
    .venv/bin/python bench/step_overhead.py --service --cells lstm --layers 2 --seq-lens 100
    .venv/bin/python bench/step_overhead.py --service --no-grid --contention 2 ...  # loaded

Runs are interleaved (plain, none, default, plain, ...) and each figure is the median over
--repeats; wall clock and this process's CPU time per step (CPU time is steadier on a shared
machine: with one thread it is the work itself). Floors (issue 19): train() with the default
instruments <= 1.05x the plain loop, through the service <= 1.10x. --malloc keep runs both
sides (this process and the service's worker) with the allocator set as a worker sets it,
--malloc shipped only the worker (as deployed: a researcher's own loop has glibc's settings);
by default both use glibc's own."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.spec import OPTIONAL_INSTRUMENTS, ExperimentCreate
from worker.datasets import make_task
from worker.instruments import default_instruments
from worker.train import train

FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
STEPS = {("rnn", 100): 100, ("rnn", 500): 40, ("lstm", 100): 60, ("lstm", 500): 20}
FLOOR_TRAIN, FLOOR_SERVICE = 1.05, 1.10


def make_spec(cell: str, layers: int, t: int, steps: int, on: list[str], a) -> ExperimentCreate:
    return ExperimentCreate.model_validate(
        {
            "task": {"name": "adding", "seq_len": t},
            "model": {"cell": cell, "hidden_size": a.hidden, "num_layers": layers},
            "train": {"steps": steps, "batch_size": a.batch, "device": "cpu"},
            "instrument": {"every": 10, "val_every": 10**5, "on": on},  # validates at the end
        }
    )


def plain_loop(spec: ExperimentCreate) -> None:
    """What a researcher writes: torch's multi-layer module, a head, Adam, clip, one
    validation at the end (as train() validates at its last step)."""
    torch.manual_seed(spec.seed)
    task = make_task(spec.task)
    m = spec.model
    rnn = FUSED[m.cell](task.input_size, m.hidden_size, num_layers=m.num_layers)
    head = nn.Linear(m.hidden_size, task.output_size)
    params = [*rnn.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=spec.train.optimizer.lr)
    gen = torch.Generator().manual_seed(spec.seed)
    for _ in range(spec.train.steps):
        x, y = task.batch(spec.train.batch_size, gen)
        loss = task.loss(head(rnn(x)[0][-1]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.train.clip.max_norm)
        opt.step()
    # In chunks of 256 examples, as a careful hand-written loop evaluates: one pass over all
    # 4096 at once costs more than chunks do (train() chunks too), which would flatter train().
    vx, vy = task.validation()
    with torch.no_grad():
        for s in range(0, vx.shape[1], 256):
            float(task.loss(head(rnn(vx[:, s : s + 256])[0][-1]), vy[s : s + 256]))


def gradlab_loop(spec: ExperimentCreate) -> None:
    train(spec, default_instruments(spec), on_flush=lambda batch, step: None)


def timed(fn, spec: ExperimentCreate) -> tuple[float, float]:
    """(wall ms, CPU ms) per training step of fn(spec), build and validation included."""
    w, c = time.perf_counter(), time.process_time()
    fn(spec)
    n = spec.train.steps
    return (time.perf_counter() - w) / n * 1e3, (time.process_time() - c) / n * 1e3


def steps_for(cell: str, t: int, scale: float) -> int:
    base = STEPS.get((cell, t), 60 if t <= 100 else 20)
    return max(int(base * scale), 11)


def grid(a) -> list[str]:
    rows = []
    header = (
        f"{'cell':<5}{'L':>2}{'T':>5}{'thr':>4}{'steps':>6}"
        f"{'plain ms':>10}{'none ms':>9}{'default ms':>11}"
        f"{'none x':>8}{'default x':>10}{'CPU none x':>11}{'CPU def x':>10}"
    )
    print(header)
    worst = 0.0
    for threads in a.threads:
        torch.set_num_threads(threads)
        for cell in a.cells:
            for layers in a.layers:
                for t in a.seq_lens:
                    steps = steps_for(cell, t, a.scale)
                    none = make_spec(cell, layers, t, steps, [], a)
                    full = make_spec(cell, layers, t, steps, list(OPTIONAL_INSTRUMENTS), a)
                    plain_loop(make_spec(cell, layers, t, 3, [], a))  # warm-up
                    got: dict[str, list[tuple[float, float]]] = {"p": [], "n": [], "d": []}
                    for _ in range(a.repeats):  # interleaved: drift hits all three alike
                        got["p"].append(timed(plain_loop, none))
                        got["n"].append(timed(gradlab_loop, none))
                        got["d"].append(timed(gradlab_loop, full))
                    med = {
                        k: [statistics.median(r[i] for r in v) for i in (0, 1)]
                        for k, v in got.items()
                    }
                    p, n, d = med["p"], med["n"], med["d"]
                    worst = max(worst, d[0] / p[0])
                    row = (
                        f"{cell:<5}{layers:>2}{t:>5}{threads:>4}{steps:>6}"
                        f"{p[0]:>10.1f}{n[0]:>9.1f}{d[0]:>11.1f}"
                        f"{n[0] / p[0]:>8.3f}{d[0] / p[0]:>10.3f}"
                        f"{n[1] / p[1]:>11.3f}{d[1] / p[1]:>10.3f}"
                    )
                    print(row, flush=True)
                    rows.append(row)
    print(f"worst wall ratio with the default instruments: {worst:.3f} (floor {FLOOR_TRAIN})")
    return rows


BUSY = "import torch\ntorch.set_num_threads(1)\nm = torch.randn(256, 256)\nwhile True: m @ m"


def through_service(a) -> None:
    """The spec through the embedded service; steps_per_second against the plain loop run
    right before and right after each service run (same thread count as the worker). The
    API (this process: the polling client, validation, the trace writes it serves) shares the
    cores. --contention N adds N busy processes (1-thread matmul loops) for the whole
    comparison, plain runs included."""
    import logging
    import subprocess

    from bench.service import service

    logging.getLogger("gradlab.http").setLevel(logging.WARNING)  # one line a poll otherwise
    threads = a.threads[0]
    torch.set_num_threads(threads)
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(a.contention)]
    try:
        _through_service(a, threads, service)
    finally:
        for p in busy:
            p.kill()
            p.wait()


def _through_service(a, threads: int, service) -> None:
    print(
        f"\nthrough the service (1 worker, {threads} torch thread(s), default instruments, "
        f"{a.contention} busy process(es) beside it)"
    )
    print(f"{'cell':<5}{'L':>2}{'T':>5}{'steps':>6}{'plain ms':>10}{'service ms':>11}{'ratio':>7}")
    with service(1, threads) as (client, desc):
        for cell in a.cells:
            for layers in a.layers:
                for t in a.seq_lens:
                    steps = steps_for(cell, t, a.scale * a.service_scale)
                    spec = make_spec(cell, layers, t, steps, list(OPTIONAL_INSTRUMENTS), a)
                    body = spec.model_dump(mode="json")
                    ratios, plains, served = [], [], []
                    for _ in range(a.repeats):
                        before = timed(plain_loop, spec)[0]
                        r = client.post("/v1/experiments", json=body)
                        loc = r.headers["location"]
                        while (e := client.get(loc).json())["status"] not in TERMINAL:
                            time.sleep(0.5)
                        after = timed(plain_loop, spec)[0]
                        ms = 1e3 / e["summary"]["steps_per_second"]
                        plain = (before + after) / 2
                        ratios.append(ms / plain)
                        plains.append(plain)
                        served.append(ms)
                    print(
                        f"{cell:<5}{layers:>2}{t:>5}{steps:>6}{statistics.median(plains):>10.1f}"
                        f"{statistics.median(served):>11.1f}{statistics.median(ratios):>7.3f}",
                        flush=True,
                    )
    print(f"backend: {desc}; floor {FLOOR_SERVICE}")


TERMINAL = {"succeeded", "diverged", "failed", "cancelled"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"])
    ap.add_argument("--layers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--seq-lens", nargs="+", type=int, default=[100, 500])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the steps per run")
    ap.add_argument("--service", action="store_true", help="also through the embedded service")
    ap.add_argument("--service-scale", type=float, default=3.0, help="steps x this for --service")
    ap.add_argument("--no-grid", action="store_true", help="only the service comparison")
    ap.add_argument("--contention", type=int, default=0, help="busy processes beside --service")
    ap.add_argument(
        "--malloc",
        choices=["default", "keep", "shipped"],
        default="default",
        help="glibc's allocator: its own settings on both sides; set to keep freed memory"
        " (worker/allocator.py) on both sides; or as each ships: this process (the plain loop)"
        " glibc's own, the service's worker keeping freed memory",
    )
    a = ap.parse_args()
    if a.malloc == "keep":
        from worker.allocator import keep_freed_memory

        assert keep_freed_memory(), "glibc did not take the allocator settings"
    os.environ["KEEP_FREED_MEMORY"] = str(a.malloc != "default").lower()  # the worker's
    print(
        f"torch {torch.__version__}, hidden {a.hidden}, batch {a.batch}, adding, Adam, clip 1, "
        f"instrument.every 10, median of {a.repeats} interleaved runs, malloc {a.malloc}"
    )
    if not a.no_grid:
        grid(a)
    if a.service:
        through_service(a)


if __name__ == "__main__":
    main()
