"""Finite-time Lyapunov exponents and Jacobian conditioning over lags, per layer, along the
network's own trajectory on the step's batch (example 0; the input from the layer below held
as it was; lstm state (h, c) of size 2H).

- exponents: the top k by the QR (Benettin) method over the T step Jacobians from the zero
  initial state, natural log per time step (series `lyapunov/{layer}`, a vector of k); the
  frame's k vectors are carried as rows through each J_t's structure (`StepJacobians.right`);
- conditioning: the largest and smallest singular values of dh_{T-1}/dh_{T-1-tau} for the lags
  tau = 1, 2, 4, ... up to min(T, MAX_LAG) (series `conditioning/{layer}/sigma_max`,
  `.../sigma_min`, vectors over the lags). The running product (`StepJacobians.left`) is
  renormalised at every factor, so it neither overflows nor underflows; in float32 sigma_min
  is resolved down to ~1e-7 sigma_max.
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
from worker.instruments.jacobians import StepJacobians, step_jacobians

MAX_LAG = 64
# Re-orthonormalise every few steps (the QR of a product of a few Jacobians is as exact, and
# the QR is the cost); few enough that the k directions do not collapse onto the first.
QR_EVERY = 4
BLOCK = 32  # step Jacobians built at a time, for a log-determinant by LU


def start_frame(size: int, k: int) -> Tensor:
    """A generic orthonormal (size, k) frame, the same at every call. Not the first k basis
    vectors: a ReLU unit that is off at t = 0 zeroes its basis vector for good (ln 0 = -inf
    in that column, an IRNN's lambda_1 read -inf where it is 0)."""
    gen = torch.Generator().manual_seed(0)
    return torch.linalg.qr(torch.randn(size, k, generator=gen, dtype=torch.float64))[0]


def exponents(jac: StepJacobians, t_len: int, size: int, k: int) -> tuple[Tensor, Tensor]:
    """Top-k exponents of the product of the T step Jacobians, and the mean ln|det J_t| (in
    closed form where `jac.log_det` has it, else by LU: at S = 256 the LU is the cost)."""
    w = jac.weight_hh
    f = start_frame(size, min(k, size)).to(w).T  # (k, S): the frame's vectors as rows
    total = torch.zeros(f.shape[0], dtype=torch.float64, device=w.device)
    for t0 in range(0, t_len, QR_EVERY):
        for t in range(t0, min(t0 + QR_EVERY, t_len)):
            f = jac.right(t, f)
        q, r = torch.linalg.qr(f.T)
        f = q.T
        total += torch.diagonal(r).abs().log().double()
    if jac.log_det is not None:
        logdet = jac.log_det[:t_len].sum()
    else:
        logdet = torch.zeros((), dtype=torch.float64, device=w.device)
        for s in range(0, t_len, BLOCK):
            logdet += torch.linalg.slogdet(jac(s, min(s + BLOCK, t_len)))[1].double().sum()
    # Descending: over a finite T exponents of (nearly) equal size come out in any order.
    return (total / t_len).sort(descending=True).values, logdet / t_len


def conditioning(jac: StepJacobians, t_len: int, lags: list[int]) -> tuple[Tensor, Tensor]:
    """Extreme singular values of J_{T-1} ... J_{T-tau} for each tau in lags: (len(lags),) x2."""
    w = jac.weight_hh
    prod = torch.eye(jac.size, dtype=w.dtype, device=w.device)
    log_scale = torch.zeros((), dtype=torch.float64, device=w.device)
    sig_max, sig_min = [], []
    for tau in range(1, max(lags) + 1):
        prod = jac.left(prod, t_len - tau)
        scale = prod.norm()
        prod, log_scale = prod / scale, log_scale + scale.double().log()
        if tau in lags:
            lo, hi = extreme_singular_values(prod)
            sig_max.append(hi * log_scale.exp())
            sig_min.append(lo * log_scale.exp())
    return torch.stack(sig_max), torch.stack(sig_min)


def extreme_singular_values(a: Tensor) -> tuple[Tensor, Tensor]:
    """sigma_min, sigma_max of a (S, S) of Frobenius norm 1, float64 scalars. By the SVD: the
    float64 Gram's eigenvalues were 15 % faster at S = 256 but floor sigma_min at ~1e-8
    sigma_max and read an exact 0 below it, which a log axis and a ratio cannot take."""
    s = torch.linalg.svdvals(a).double()
    return s[-1], s[0]


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
