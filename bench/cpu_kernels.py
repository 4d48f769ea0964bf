"""The CPU pieces an instrumented step is made of, each against what torch does by itself
(1 torch thread, CPU time, median of --reps; glibc's freed memory kept as a worker keeps it,
or with --malloc default glibc's own settings, as in a user's own process):

- products: torch's matmul (MKL) against oneDNN's (gradlab/instruments/matmul.py) at the
  closed-form layers' shapes, hidden 128, batch 64, T = 100, and which this CPU takes;
- one layer's forward and backward: torch's fused module, alone and followed by the adjoint
  recomputed, against the closed-form layer (gradlab/instruments/closed_layer.py): lstm, gru,
  tanh rnn, its gate arithmetic by the C kernels (native.py) and by torch's ops;
- one lstm layer's Lyapunov instrument (step Jacobians, exponents k = 8, conditioning);
- gate saturation of one lstm layer's gates;
- the held-out set (4096 examples) through train()'s validator in chunks of each size.

    .venv/bin/python bench/cpu_kernels.py [--reps 15] [--malloc keep|default]"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.spec import ExperimentCreate
from gradlab.instruments import adjoint, closed_layer, matmul, native
from gradlab.instruments.saturation import gate_saturation
from worker.allocator import keep_freed_memory
from worker.datasets import make_task
from worker.instruments.jacobians import step_jacobians
from worker.instruments.lyapunov import conditioning, default_lags, exponents
from worker.train import Run, Validator, build_model

T, B, H = 100, 64, 128


def cpu_ms(fn, reps: int, inner: int = 1) -> float:
    fn()
    times = []
    for _ in range(reps):
        c = time.process_time()
        for _ in range(inner):
            fn()
        times.append((time.process_time() - c) / inner)
    return 1e3 * statistics.median(times)


def products(reps: int) -> None:
    h, w, out = torch.randn(B, H), torch.randn(4 * H, H), torch.randn(B, 4 * H)
    x, b = torch.randn(T * B, H), torch.randn(4 * H)
    dz, xh = torch.randn(T * B, 4 * H), torch.randn(T * B, 2 * H)
    got = {}
    for route in ("blas", "onednn"):
        with matmul.pinned(route):
            packed = matmul.Weight(w, B)
            got[route] = (
                cpu_ms(lambda p=packed: p.plus(h, out), reps, 500),
                cpu_ms(lambda: matmul.linear(x, w, b), reps),
                cpu_ms(lambda: matmul.t_mm(dz, xh), reps),
            )
    mkl, dnn = got["blas"], got["onednn"]
    chosen = "oneDNN" if matmul.Weight(w, B).packed is not None else "MKL"
    filed = matmul._route_file()
    raced = filed.read_text().strip() if filed.exists() else "(not filed)"
    print(f"products (CPU capability {torch.backends.cpu.get_cpu_capability()}: {chosen})")
    print(f"  this machine's race, {filed}: {raced}")
    print(
        f"  ({B}, {H}) x ({H}, {4 * H}) + add: MKL {1e3 * mkl[0]:.0f} us, oneDNN packed "
        f"{1e3 * dnn[0]:.0f} us"
    )
    print(f"  ({T * B}, {H}) x ({H}, {4 * H}) + bias: MKL {mkl[1]:.2f} ms, oneDNN {dnn[1]:.2f} ms")
    print(
        f"  ({T * B}, {4 * H}).T x ({T * B}, {2 * H}), the weight gradient: MKL {mkl[2]:.2f} ms,"
        f" oneDNN {dnn[2]:.2f} ms"
    )


def layers(reps: int) -> None:
    print(
        "one layer, forward and backward (input 128, sum of outputs as the loss), ms; "
        "'then adjoint': the fused layer, then the closed-form adjoint recomputed from its "
        "outputs (the route without the closed-form layer)"
    )
    for name, layer in (("lstm", nn.LSTM(H, H)), ("gru", nn.GRU(H, H)), ("rnn tanh", nn.RNN(H, H))):
        x = torch.randn(T, B, H, requires_grad=True)

        def fused(layer=layer, x=x):
            layer(x)[0].sum().backward()

        def then_adjoint(layer=layer, x=x):
            h = layer(x)[0]
            h.retain_grad()
            h.sum().backward()
            adjoint.total_adjoint(layer, x.detach(), h)

        def closed(route: str, kernels: bool = True, layer=layer, x=x):
            with matmul.pinned(route), contextlib.nullcontext() if kernels else native.off():
                closed_layer.closed_forward(layer, x).sum().backward()

        print(
            f"  {name}: fused {cpu_ms(fused, reps):.1f}, then adjoint "
            f"{cpu_ms(then_adjoint, reps):.1f}, closed form with MKL's products "
            f"{cpu_ms(lambda c=closed: c('blas'), reps):.1f} (the gates by torch's ops "
            f"{cpu_ms(lambda c=closed: c('blas', False), reps):.1f}), with oneDNN's "
            f"{cpu_ms(lambda c=closed: c('onednn'), reps):.1f}"
        )


def lyapunov_and_saturation(reps: int) -> None:
    lstm, x = nn.LSTM(H, H), torch.randn(T, B, H)
    with torch.no_grad():
        h = lstm(x)[0]

    def lyapunov():
        jac = step_jacobians(lstm, x, h)
        exponents(jac, T, 2 * H, 8)
        conditioning(jac, T, default_lags(T))

    w = [p.detach() for p in lstm.parameters()]
    _, gates = closed_layer._lstm_forward(x, w[0], w[1], w[2] + w[3])
    sat = cpu_ms(lambda: gate_saturation(gates.names, gates.values), reps)
    with native.off():
        sat_torch = cpu_ms(lambda: gate_saturation(gates.names, gates.values), reps)
    print(
        f"lstm layer: Lyapunov instrument {cpu_ms(lyapunov, max(3, reps // 3)):.1f} ms, "
        f"gate saturation {sat:.2f} ms (by torch's ops {sat_torch:.2f})"
    )


def validation(reps: int) -> None:
    print("held-out set (4096 examples, T = 100) by chunk size, ms")
    for cell, n_layers in (("lstm", 2), ("lstm", 1), ("gru", 1), ("rnn", 1)):
        spec = ExperimentCreate.model_validate(
            {
                "task": {"name": "adding", "seq_len": T},
                "model": {"cell": cell, "hidden_size": H, "num_layers": n_layers},
                "train": {"device": "cpu"},
            }
        )
        task = make_task(spec.task)
        model = build_model(spec, task)
        run = Run(
            spec,
            task,
            model,
            torch.optim.Adam(model.parameters()),
            torch.device("cpu"),
            torch.float32,
        )
        validator = Validator(run)
        chosen, row = validator.chunk, {}
        for chunk in (64, 128, 256, 512):
            validator.chunk = chunk
            row[chunk] = cpu_ms(lambda v=validator, r=run: v.evaluate(r), max(3, reps // 5))
        cells = ", ".join(f"{c}: {ms:.0f}" for c, ms in row.items())
        print(f"  {cell} {n_layers} x {H}: {cells} (train() takes chunks of {chosen})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--malloc", choices=["keep", "default"], default="keep")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.malloc == "keep":
        assert keep_freed_memory(), "glibc did not take the allocator settings"
    kernels = "built" if native.library() is not None else "not built"
    print(f"torch {torch.__version__}, 1 thread, malloc {a.malloc}, C gate kernels {kernels}")
    products(a.reps)
    layers(a.reps)
    lyapunov_and_saturation(a.reps)
    validation(a.reps)


if __name__ == "__main__":
    main()
