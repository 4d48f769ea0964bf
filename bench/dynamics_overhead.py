"""Issue 13's overhead floor: every instrument on (the dynamics ones included),
instrument.every = 10, LSTM 2 x 128, batch 64, T = 100, 1 thread, against a plain loop on
torch's fused nn.LSTM(2, 128, num_layers=2) written by hand, interleaved in one run.

    .venv/bin/python bench/dynamics_overhead.py [--steps 100 --repeats 5]

Each loop is timed by the wall clock and by the process's CPU time: on a shared machine the
wall clock also counts the time the process waited for a core, the CPU time does not (with
one thread it is the compute itself)."""

import argparse
import statistics
import time

import step_overhead
import torch

from core.spec import ExperimentCreate
from worker.instruments import default_instruments
from worker.train import train


def plain_loop(spec: ExperimentCreate, steps: int) -> tuple[float, float]:
    """step_overhead's hand-written loop (nn.LSTM(num_layers=2), a head, Adam, clip, and one
    validation at the end, as train() validates at its last step): (wall, CPU) ms a step."""
    run = spec.model_copy(update={"train": spec.train.model_copy(update={"steps": steps})})
    t0, c0 = time.perf_counter(), time.process_time()
    step_overhead.plain_loop(run)
    return (time.perf_counter() - t0) / steps * 1e3, (time.process_time() - c0) / steps * 1e3


def service_loop(spec: ExperimentCreate) -> tuple[float, float]:
    c0 = time.process_time()
    result = train(spec, default_instruments(spec), on_flush=lambda b, s: None)
    cpu = (time.process_time() - c0) / spec.train.steps * 1e3  # the set-up included
    return 1e3 / result.summary["steps_per_second"], cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dynamics-every", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    instrument = {"every": 10, "val_every": 10**5}  # "on" left out: every instrument
    if args.dynamics_every is not None:
        instrument["dynamics_every"] = args.dynamics_every
    spec = ExperimentCreate.model_validate(
        {
            "task": {"name": "adding", "seq_len": 100},
            "model": {"cell": "lstm", "hidden_size": 128, "num_layers": 2},
            "train": {"steps": args.steps, "batch_size": 64, "device": "cpu"},
            "instrument": instrument,
        }
    )
    plain_loop(spec, 10)  # warm-up
    plain, service, plain_cpu, s_cpu = [], [], [], []
    for _ in range(args.repeats):
        wall, cpu = plain_loop(spec, args.steps)
        plain.append(wall)
        plain_cpu.append(cpu)
        wall, cpu = service_loop(spec)
        service.append(wall)
        s_cpu.append(cpu)
    p, s = statistics.median(plain), statistics.median(service)
    pc, sc = statistics.median(plain_cpu), statistics.median(s_cpu)
    print(
        f"lstm 2x128, batch 64, T=100, every=10, dynamics_every={spec.instrument.dynamics_every}, "
        f"instruments on: {', '.join(spec.instrument.on)}; {args.steps} steps x {args.repeats}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread"
    )
    print(f"plain nn.LSTM loop : {p:8.2f} ms/step  (all: {', '.join(f'{v:.1f}' for v in plain)})")
    print(f"gradlab train()    : {s:8.2f} ms/step  (all: {', '.join(f'{v:.1f}' for v in service)})")
    print(f"ratio              : {s / p:8.3f}")
    print(
        f"CPU time, plain    : {pc:8.2f} ms/step  (all: {', '.join(f'{v:.1f}' for v in plain_cpu)})"
    )
    print(f"CPU time, gradlab  : {sc:8.2f} ms/step  (all: {', '.join(f'{v:.1f}' for v in s_cpu)})")
    print(f"CPU-time ratio     : {sc / pc:8.3f}")


if __name__ == "__main__":
    main()
