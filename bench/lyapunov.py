"""Lyapunov exponents: gradlab's lambda_max for the autonomous tanh RNN h_t = tanh(W h_{t-1}),
W_ij ~ N(0, g^2/N), N = 400, beside the literature (Engelken, Wolf & Abbott, "Lyapunov
spectra of chaotic recurrent neural networks"); and the time per instrumented step of the
Lyapunov instrument's computation on a 128-unit net over T = 500, 1 thread.

    python bench/lyapunov.py"""

import math
import time

import torch

from models import RecurrentNet
from worker.instruments.jacobians import step_jacobians
from worker.instruments.lyapunov import conditioning, default_lags, exponents

LITERATURE = {1.5: 0.06, 2.0: 0.15, 3.0: 0.30}


def autonomous(g: float, n: int = 400, burn: int = 500, t_len: int = 2000, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    net = RecurrentNet(1, 1, cell="rnn", activation="tanh", hidden_size=n).double()
    with torch.no_grad():
        layer = net.rnn[0]
        layer.weight_hh_l0.copy_(torch.randn(n, n, generator=gen, dtype=torch.float64))
        layer.weight_hh_l0.mul_(g / math.sqrt(n))
        for p in (layer.weight_ih_l0, layer.bias_ih_l0, layer.bias_hh_l0):
            p.zero_()
        h = torch.randn(n, generator=gen, dtype=torch.float64)
        for _ in range(burn):  # onto the attractor
            h = torch.tanh(layer.weight_hh_l0 @ h)
        # The layer starts from zero: feed the state in through the input at step 0.
        layer.weight_ih_l0 = torch.nn.Parameter(torch.eye(n, 1, dtype=torch.float64))
        x = torch.zeros(t_len, 1, 1, dtype=torch.float64)
        hs = [h]
        for _ in range(t_len - 1):
            hs.append(torch.tanh(layer.weight_hh_l0 @ hs[-1]))
        traj = torch.stack(hs).unsqueeze(1)  # (T, 1, N)
    jac = step_jacobians(layer, x, traj)
    lam, _ = exponents(jac, t_len, n, k=1)
    return float(lam[0])


def timing(cell: str, t_len: int = 500, n: int = 128) -> float:
    net = RecurrentNet(2, 1, cell=cell, hidden_size=n)
    x = torch.randn(t_len, 64, 2)
    h = net(x).layers[0].detach()
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        jac = step_jacobians(net.rnn[0], x, h)
        size = 2 * n if cell == "lstm" else n
        exponents(jac, t_len, size, k=8)
        conditioning(jac, t_len, default_lags(t_len))
        best = min(best, time.perf_counter() - t0)
    return best


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("g     gradlab lambda_max   literature")
    for g, want in LITERATURE.items():
        got = [autonomous(g, seed=s) for s in range(3)]
        seeds = ", ".join(f"{v:+.3f}" for v in got)
        print(f"{g:<5} {sum(got) / 3:+.3f} (seeds {seeds})   {want:+.2f}")
    for cell in ("rnn", "gru", "lstm"):
        print(f"{cell}: H=128, T=500, k=8, per layer and instrumented step: {timing(cell):.3f} s")
