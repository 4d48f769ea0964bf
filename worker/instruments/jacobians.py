"""Step Jacobians J_t = ds_t/ds_{t-1} of one recurrent layer along one example's trajectory,
in closed form from the stored inputs and outputs (no autograd): rnn diag(f'(z_t)) W_hh;
lstm the exact (h, c) -> (h, c) map of size 2H; gru the gates' full derivative. The input
from the layer below is held as it was. Used by the Lyapunov instrument."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from worker.instruments.adjoint import (
    _gates,
    _lstm_coef,
    activation_derivative,
    layer_kind,
    shifted,
)

Jacobians = Callable[[int, int], Tensor]


class StepJacobians:
    """(s, e) -> J_t for s <= t < e; `log_det`: ln|det J_t| for every t, (T,), in closed form
    where the structure gives it (rnn: diag(f') W; lstm: by the Schur complement of the
    diagonal c -> c block, prod(f) det(diag(sigma'(o) tanh c) W_o)), else None."""

    def __init__(
        self, build: Jacobians, log_det: Tensor | None = None, diagonal_cell: bool = False
    ) -> None:
        self.build, self.log_det = build, log_det
        # lstm: the columns for c_{t-1} hold two diagonal blocks (c_t = f c_{t-1} + ...)
        self.diagonal_cell = diagonal_cell

    def __call__(self, s: int, e: int) -> Tensor:
        return self.build(s, e)


def _log_abs_det(w: Tensor) -> Tensor:
    return torch.linalg.slogdet(w.double())[1]


@torch.no_grad()
def step_jacobians(
    layer: nn.Module, x: Tensor, h: Tensor, example: int = 0
) -> StepJacobians | None:
    """A function (s, e) -> J_t for s <= t < e, (e - s, S, S), t counted from the zero initial
    state; None without a closed form. The per-step coefficients are computed once; the
    matrices are built a block at a time (whole (T, S, S) passes are memory-bound).
    x: the layer's input (T, B, I); h: its outputs (T, B, H)."""
    kind = layer_kind(layer)
    if kind is None or kind == "step":
        return None
    x1, h1 = x[:, example : example + 1], h[:, example : example + 1]  # (T, 1, ·)
    w = layer.weight_hh_l0.detach()
    n = h.shape[2]
    if kind.startswith("rnn:"):
        dfdz = activation_derivative(kind.split(":", 1)[1], layer, x1, h1)[:, 0]  # (T, H)
        log_det = dfdz.double().abs().log().sum(1) + _log_abs_det(w)
        return StepJacobians(lambda s, e: dfdz[s:e].unsqueeze(2) * w, log_det)
    g = _gates(layer, x1, h1)
    if kind == "lstm":
        c = g.cell  # (T, 1, H)
        coef, keep = _lstm_coef(g.values, c, shifted(c))
        coef, keep, f = coef[:, 0], keep[:, 0], g.values[:, 0, 1]  # (T, 4, H), (T, H), (T, H)
        blocks = w.view(4, n, n)

        def lstm(s: int, e: int) -> Tensor:
            out = w.new_empty(e - s, 2 * n, 2 * n)  # state (h, c)
            dc_dh = torch.einsum("tkh,khj->thj", coef[s:e, :3], blocks[:3])  # (L, H, H)
            torch.mul(coef[s:e, 3].unsqueeze(2), blocks[3], out=out[:, :n, :n])
            out[:, :n, :n].addcmul_(keep[s:e].unsqueeze(2), dc_dh)
            out[:, n:, :n] = dc_dh
            out[:, :, n:] = 0
            out[:, :n, n:].diagonal(dim1=1, dim2=2).copy_(keep[s:e] * f[s:e])
            out[:, n:, n:].diagonal(dim1=1, dim2=2).copy_(f[s:e])
            return out

        # det J = det(diag f) det(A - diag(keep f) diag(f)^-1 C), and A - diag(keep) C is
        # diag(sigma'(o) tanh c) W_o: the cell path's coupling cancels.
        log_det = (f.double().log() + coef[:, 3].double().abs().log()).sum(1)
        return StepJacobians(lstm, log_det + _log_abs_det(blocks[3]), diagonal_cell=True)
    r, z, nn_ = g.values[:, 0].unbind(1)  # (T, H) each
    hh_n, h_prev = g.hh_n[:, 0], shifted(h1)[:, 0]
    dn = (1 - z) * (1 - nn_ * nn_)
    coefs = torch.stack([dn * hh_n * (r - r * r), (h_prev - nn_) * (z - z * z), dn * r], 1)
    blocks = w.view(3, n, n)

    def gru(s: int, e: int) -> Tensor:
        jac = torch.einsum("tkh,khj->thj", coefs[s:e], blocks)
        jac.diagonal(dim1=1, dim2=2).add_(z[s:e])
        return jac

    return StepJacobians(gru)
