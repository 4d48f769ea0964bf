"""Finite-time Lyapunov exponents and Jacobian conditioning over lags, per layer, along the
network's own trajectory on the step's batch (example 0; the input from the layer below held
as it was; lstm state (h, c) of size 2H).

- exponents: the top k by the QR (Benettin) method over the T step Jacobians from the zero
  initial state, natural log per time step (series `lyapunov/{layer}`, a vector of k);
- conditioning: the largest and smallest singular values of dh_{T-1}/dh_{T-1-tau} for the lags
  tau = 1, 2, 4, ... up to min(T, MAX_LAG) (series `conditioning/{layer}/sigma_max`,
  `.../sigma_min`, vectors over the lags). The product is renormalised at every factor, so
  it neither overflows nor underflows; in float32 sigma_min is resolved down to ~1e-7 sigma_max.
Costly beside the other instruments: runs on every `instrument.dynamics_every`-th
instrumented step."""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import Tensor

from core import series
from core.diagnosis import WINDOW_STEPS
from worker.instruments.base import Instrument, Run, StepContext
from worker.instruments.jacobians import Jacobians, step_jacobians

MAX_LAG = 64
# Re-orthonormalise every few steps (the QR of a product of a few Jacobians is as exact, and
# the QR is the cost); few enough that the k directions do not collapse onto the first.
QR_EVERY = 4
BLOCK = 32  # step Jacobians built at a time


def start_frame(size: int, k: int) -> Tensor:
    """A generic orthonormal (size, k) frame, the same at every call. Not the first k basis
    vectors: a ReLU unit that is off at t = 0 zeroes its basis vector for good (ln 0 = -inf
    in that column, an IRNN's lambda_1 read -inf where it is 0)."""
    gen = torch.Generator().manual_seed(0)
    return torch.linalg.qr(torch.randn(size, k, generator=gen, dtype=torch.float64))[0]


def exponents(jac: Jacobians, t_len: int, size: int, k: int) -> tuple[Tensor, Tensor]:
    """Top-k exponents of the product of the T step Jacobians, and the mean ln|det J_t| (in
    closed form where `jac.log_det` has it, else by LU: at S = 256 the LU is the cost)."""
    first = jac(0, 1)
    q = start_frame(size, min(k, size)).to(first)
    total = torch.zeros(q.shape[1], dtype=torch.float64, device=first.device)
    known = getattr(jac, "log_det", None)
    logdet = torch.zeros((), dtype=torch.float64, device=first.device)
    for s in range(0, t_len, BLOCK):
        block = jac(s, min(s + BLOCK, t_len))  # (L, S, S)
        if known is None:
            logdet += torch.linalg.slogdet(block)[1].double().sum()
        for j0 in range(0, block.shape[0], QR_EVERY):
            for j in block[j0 : j0 + QR_EVERY]:
                q = j @ q
            q, r = torch.linalg.qr(q)
            total += torch.diagonal(r).abs().log().double()
    if known is not None:
        logdet = known[:t_len].sum()
    # Descending: over a finite T exponents of (nearly) equal size come out in any order.
    return (total / t_len).sort(descending=True).values, logdet / t_len


def conditioning(jac: Jacobians, t_len: int, lags: list[int]) -> tuple[Tensor, Tensor]:
    """Extreme singular values of J_{T-1} ... J_{T-tau} for each tau in lags: (len(lags),) x2."""
    last = jac(t_len - max(lags), t_len)  # (max lag, S, S)
    prod = torch.eye(last.shape[1], dtype=last.dtype, device=last.device)
    log_scale = torch.zeros((), dtype=torch.float64, device=last.device)
    sig_max, sig_min = [], []
    for tau in range(1, max(lags) + 1):
        prod = _times(prod, last[-tau], getattr(jac, "diagonal_cell", False))
        scale = prod.norm()
        prod, log_scale = prod / scale, log_scale + scale.double().log()
        if tau in lags:
            s = torch.linalg.svdvals(prod).double() * log_scale.exp()
            sig_max.append(s[0])
            sig_min.append(s[-1])
    return torch.stack(sig_max), torch.stack(sig_min)


def _times(prod: Tensor, j: Tensor, diagonal_cell: bool) -> Tensor:
    """prod @ j; for an lstm's (h, c) Jacobian, whose c columns are diag(keep f) over
    diag(f), half the GEMM: the c columns are two scaled copies."""
    if not diagonal_cell:
        return prod @ j
    n = j.shape[0] // 2
    out = torch.empty_like(prod)
    torch.mm(prod, j[:, :n], out=out[:, :n])
    torch.mul(prod[:, :n], j[:n, n:].diagonal(), out=out[:, n:])
    out[:, n:].addcmul_(prod[:, n:], j[n:, n:].diagonal())
    return out


def default_lags(t_len: int) -> list[int]:
    return series.conditioning_lags(min(t_len, MAX_LAG).bit_length())  # 1, 2, 4, ... <= T


class Lyapunov(Instrument):
    name = "lyapunov"

    def __init__(self, k: int = 8) -> None:
        self.k = k

    def start(self, run: Run) -> None:
        self.window: deque[dict[str, Any]] = deque(maxlen=WINDOW_STEPS)

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        if not run.dynamics:
            return
        out, layers = ctx.output, []
        for i, (layer, x, h) in enumerate(zip(run.model.rnn, out.inputs, out.layers, strict=True)):
            jac = step_jacobians(layer, x, h)
            if jac is None:
                layers.append(None)
                continue
            t_len, size = h.shape[0], h.shape[2] * (2 if run.model.cell == "lstm" else 1)
            lam, logdet = exponents(jac, t_len, size, self.k)
            lags = default_lags(t_len)
            smax, smin = conditioning(jac, t_len, lags)
            run.recorder.record(f"lyapunov/{i}", ctx.step, lam)
            run.recorder.record(f"conditioning/{i}/sigma_max", ctx.step, smax)
            run.recorder.record(f"conditioning/{i}/sigma_min", ctx.step, smin)
            entry = {"exponents": lam.tolist(), "lambda_1": float(lam[0]), "lags": lags}
            entry.update(sigma_max=smax.tolist(), sigma_min=smin.tolist())
            layers.append({**entry, "log_det_mean": float(logdet)})
        if ctx.finite:
            self.window.append({"step": ctx.step, "layers": layers})

    def summary(self, run: Run) -> dict[str, Any]:
        return {"lyapunov": {"window": list(self.window), "k": self.k}}
