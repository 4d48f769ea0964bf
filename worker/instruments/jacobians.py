"""Step Jacobians J_t = ds_t/ds_{t-1} of one recurrent layer along one example's trajectory,
in closed form from the stored inputs and outputs (no autograd): rnn diag(f'(z_t)) W_hh;
lstm the exact (h, c) -> (h, c) map of size 2H; gru the gates' full derivative. The input
from the layer below is held as it was. Used by the Lyapunov instrument.

Each J_t is a few diagonal scalings of the blocks W_k of the stacked W_hh (G*H, H), and the
instrument needs only its products: with a k-frame (`right`) and a running (S, S) product
(`left`), one GEMM a step either way, without the dense (S, S) J_t, which `jac(s, e)` still
builds for the tests and the gru's log-determinant. The per-step coefficients are computed
once."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradlab.instruments import matmul
from worker.instruments.adjoint import (
    _gates,
    _lstm_coef,
    activation_derivative,
    layer_kind,
    shifted,
)


class StepJacobians:
    """J_t for t counted from the zero initial state, S the state size:

    - `jac(s, e)`: the dense blocks J_t for s <= t < e, (e - s, S, S);
    - `right(t, f)`: (J_t @ f.T).T for a frame stored transposed, f (k, S): (k, S);
    - `left(p, t)`: p @ J_t for p (S', S): (S', S);
    - `log_det`: ln|det J_t| for every t, (T,), in closed form where the structure gives it
      (rnn: diag(f') W; lstm: by the Schur complement of the diagonal c -> c block,
      prod(f) det(diag(sigma'(o) tanh c) W_o)), else None.

    right() takes the frame's k rows through the structure: k x G*H products of f_h W^T,
    scaled per gate (k = 8 rows cost less than building J_t's G*H*H). left() has S' ~ S rows,
    for which the structure would cost G*H columns of p against W where J_t has H (twice the
    GEMM for an lstm, 3x for a gru): it builds this step's H columns of J_t (G*H*H products;
    an lstm's c columns are diagonal) as a linear layer's weight, then one GEMM. Measured at
    H = 128, 1 thread: lstm 144 us a step against 210 through the structure, gru 53 against 85."""

    log_det: Tensor | None = None

    def __init__(self, weight_hh: Tensor, size: int) -> None:
        self.weight_hh, self.size = weight_hh, size  # (G*H, H)
        self.n = weight_hh.shape[1]
        self.w_t = weight_hh.t().contiguous()  # (H, G*H): [W_1^T | W_2^T | ...]

    def __call__(self, s: int, e: int) -> Tensor:
        raise NotImplementedError

    def right(self, t: int, f: Tensor) -> Tensor:
        raise NotImplementedError

    def left(self, p: Tensor, t: int) -> Tensor:
        raise NotImplementedError

    def _gates_of(self, f: Tensor, coef: Tensor) -> Tensor:
        """coef_k * (W_k h) for each gate k and each row h of f (k, H): (k, G, H). By MKL:
        at 8 rows oneDNN is no faster (8 x 128 x 512: 17 us either way; x 128: 13 against 5)."""
        return (f @ self.weight_hh.t()).view(f.shape[0], -1, self.n).mul_(coef)

    def _sum_scaled(self, coef: Tensor, out: Tensor | None = None) -> Tensor:
        """sum_k W_k^T diag(coef_k) over the first len(coef) gates: (H, H)."""
        n, w_t = self.n, self.w_t
        out = torch.mul(w_t[:, :n], coef[0], out=out)
        for k in range(1, coef.shape[0]):
            out.addcmul_(w_t[:, k * n : (k + 1) * n], coef[k])
        return out


def _log_abs_det(w: Tensor) -> Tensor:
    return torch.linalg.slogdet(w.double())[1]


class _Rnn(StepJacobians):
    """J_t = diag(a_t) W, a_t = f'(z_t)."""

    def __init__(self, w: Tensor, dfdz: Tensor) -> None:
        super().__init__(w, w.shape[1])
        self.a = dfdz  # (T, H)
        self.log_det = dfdz.double().abs().log().sum(1) + _log_abs_det(w)
        self.packed = matmul.Weight(self.w_t, self.size)  # for left(): W the same every t

    def __call__(self, s: int, e: int) -> Tensor:
        return self.a[s:e].unsqueeze(2) * self.weight_hh

    def right(self, t: int, f: Tensor) -> Tensor:
        return self._gates_of(f, self.a[t])[:, 0]

    def left(self, p: Tensor, t: int) -> Tensor:
        return self.packed.times(p * self.a[t])


class _Lstm(StepJacobians):
    """State (h, c), S = 2H: J_t = [[A, diag(keep f)], [C, diag(f)]] with
    C = sum_{k in i, f, g} diag(coef_k) W_k and A = diag(coef_o) W_o + diag(keep) C."""

    def __init__(self, w: Tensor, coef: Tensor, keep: Tensor, f: Tensor) -> None:
        super().__init__(w, 2 * w.shape[1])
        self.coef, self.keep, self.f = coef, keep, f  # (T, 4, H), (T, H), (T, H)
        # det J = det(diag f) det(A - diag(keep f) diag(f)^-1 C), and A - diag(keep) C is
        # diag(sigma'(o) tanh c) W_o: the cell path's coupling cancels.
        log_det = (f.double().log() + coef[:, 3].double().abs().log()).sum(1)
        self.log_det = log_det + _log_abs_det(w[3 * self.n :])

    def __call__(self, s: int, e: int) -> Tensor:
        n, blocks = self.n, self.weight_hh.view(4, self.n, self.n)
        coef, keep, f = self.coef[s:e], self.keep[s:e], self.f[s:e]
        out = self.weight_hh.new_empty(e - s, 2 * n, 2 * n)
        dc_dh = torch.einsum("tkh,khj->thj", coef[:, :3], blocks[:3])  # (L, H, H)
        torch.mul(coef[:, 3].unsqueeze(2), blocks[3], out=out[:, :n, :n])
        out[:, :n, :n].addcmul_(keep.unsqueeze(2), dc_dh)
        out[:, n:, :n] = dc_dh
        out[:, :, n:] = 0
        out[:, :n, n:].diagonal(dim1=1, dim2=2).copy_(keep * f)
        out[:, n:, n:].diagonal(dim1=1, dim2=2).copy_(f)
        return out

    def right(self, t: int, f: Tensor) -> Tensor:
        n = self.n
        u = self._gates_of(f[:, :n], self.coef[t])  # (k, 4, H)
        out = f.new_empty(f.shape[0], 2 * n)  # (h, c)
        new_c = torch.sum(u[:, :3], 1, out=out[:, n:]).addcmul_(f[:, n:], self.f[t])
        torch.addcmul(u[:, 3], new_c, self.keep[t], out=out[:, :n])
        return out

    def left(self, p: Tensor, t: int) -> Tensor:
        n, coef, keep = self.n, self.coef[t], self.keep[t]
        cols = p.new_empty(n, 2 * n)  # [A^T | C^T]: p @ [A; C] as linear(p, cols)
        c_t = self._sum_scaled(coef[:3], out=cols[:, n:])
        torch.mul(self.w_t[:, 3 * n :], coef[3], out=cols[:, :n]).addcmul_(c_t, keep)
        m = torch.addcmul(p[:, n:], p[:, :n], keep)  # (S', H): the rows' weight on c_t
        return torch.cat([matmul.linear(p, cols), m * self.f[t]], 1)


class _Gru(StepJacobians):
    """J_t = sum_{k in r, z, n} diag(c_k) W_k + diag(z)."""

    def __init__(self, w: Tensor, coefs: Tensor, z: Tensor) -> None:
        super().__init__(w, w.shape[1])
        self.coefs, self.z = coefs, z  # (T, 3, H), (T, H)

    def __call__(self, s: int, e: int) -> Tensor:
        blocks, c = self.weight_hh.view(3, self.n, self.n), self.coefs[s:e].unsqueeze(3)
        # an einsum took 4x as long (a batched GEMM over h of (L, 3) x (3, H))
        jac = torch.mul(c[:, 0], blocks[0])  # (L, H, H)
        jac.addcmul_(c[:, 1], blocks[1]).addcmul_(c[:, 2], blocks[2])
        jac.diagonal(dim1=1, dim2=2).add_(self.z[s:e])
        return jac

    def right(self, t: int, f: Tensor) -> Tensor:
        return self._gates_of(f, self.coefs[t]).sum(1).addcmul_(f, self.z[t])

    def left(self, p: Tensor, t: int) -> Tensor:
        j_t = self._sum_scaled(self.coefs[t])  # J_t^T less its diagonal
        j_t.diagonal().add_(self.z[t])
        return matmul.linear(p, j_t)


@torch.no_grad()
def step_jacobians(
    layer: nn.Module, x: Tensor, h: Tensor, example: int = 0
) -> StepJacobians | None:
    """The step Jacobians of one layer along example `example`, None without a closed form.
    x: the layer's input (T, B, I); h: its outputs (T, B, H)."""
    kind = layer_kind(layer)
    if kind is None or kind == "step":
        return None
    x1, h1 = x[:, example : example + 1], h[:, example : example + 1]  # (T, 1, ·)
    w = layer.weight_hh_l0.detach()
    if kind.startswith("rnn:"):
        dfdz = activation_derivative(kind.split(":", 1)[1], layer, x1, h1)[:, 0]  # (T, H)
        return _Rnn(w, dfdz)
    g = _gates(layer, x1, h1)
    if kind == "lstm":
        c = g.cell  # (T, 1, H)
        coef, keep = _lstm_coef(g.values, c, shifted(c))
        return _Lstm(w, coef[:, 0], keep[:, 0], g.values[:, 0, 1])
    r, z, nn_ = g.values[:, 0].unbind(1)  # (T, H) each
    hh_n, h_prev = g.hh_n[:, 0], shifted(h1)[:, 0]
    dn = (1 - z) * (1 - nn_ * nn_)
    coefs = torch.stack([dn * hh_n * (r - r * r), (h_prev - nn_) * (z - z * z), dn * r], 1)
    return _Gru(w, coefs, z)
