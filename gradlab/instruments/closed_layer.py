"""A recurrent layer whose backward pass is the closed-form adjoint (adjoint.py): on the steps
an instrument reads dL/dh_t, the training step's own backward computes it, instead of torch's
backward followed by the same recursion again.

The forward runs the layer step by step without autograd, keeping what the backward needs (the
gates, for an lstm the cell states, for a gru W_hn h_{t-1} + b_hn); the backward solves
a_t = direct_t + J_{t+1}^T a_{t+1} (the total adjoint, what the temporal profile reports),
takes the parameter and input gradients from the pre-activation gradients with a GEMM each,
and leaves the adjoint, the cell path and the gates where `adjoint.total_adjoint` and
`adjoint.gates` find them. Same mathematics as torch's backward, another summation order:
gradients agree to rounding, not bit for bit. In float32 on the CPU an lstm's or gru's gate
arithmetic is one C kernel call a time step (native.py), torch keeping the GEMMs; without the
kernels it is torch's ops. Both take tanh as 2 sigmoid(2z) - 1 (torch's CPU tanh costs 6x its
sigmoid): exact to an absolute ~1e-7 in float32 rather than a relative one, which only values
under ~1e-5 notice. CPU only: on a GPU a step-by-step loop would cost a kernel launch per
operation.

Why: with two layers of 128 at T = 100 the fused per-layer step and the adjoint after it took
about 150 ms a layer, this one about 105 (fused forward and backward alone: about 85), on an
older machine. On an Intel Xeon (bench/cpu_kernels.py, CPU ms, one layer forward and
backward): lstm fused 76.9, fused then the recomputed adjoint 132.4, this layer 94.7 (137.9
with torch's ops for the gates); gru 96.7, 142.2 and 74.1 (torch's CPU GRU has no fused
kernel)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gradlab.instruments import adjoint, matmul, native
from gradlab.instruments.adjoint import Gates, layer_kind


def _doubled(t: Tensor, gate: int, n: int) -> Tensor:
    """A copy of a weight or bias (G*H, ...) with one gate's rows times 2: exact in binary
    floating point, so that gate's pre-activations come out as 2z."""
    t = t.clone()
    t[gate * n : (gate + 1) * n].mul_(2)
    return t


@torch.no_grad()
def _lstm_forward(
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    c0: Tensor | None = None,
) -> tuple[Tensor, Gates]:
    if native.usable(x, w_hh):
        hs, v, cs, tcs = native.lstm_forward(x, w_ih, w_hh, b, h0, c0)
        return hs, Gates(("i", "f", "g", "o"), v, cell=cs, cell_tanh=tcs)
    t_len, batch, _ = x.shape
    n = w_hh.shape[1]
    # tanh z = 2 sigmoid(2z) - 1: torch's CPU tanh costs 6x its sigmoid, and with g's rows
    # doubled one sigmoid over the contiguous (B, 4H) row serves all four gates.
    w_ih, w_hh, b = (_doubled(p, 2, n) for p in (w_ih, w_hh, b))
    v = matmul.linear(x.flatten(0, 1), w_ih, b).view(t_len, batch, 4, n)  # (T, B, 4, H)
    hs, cs, tcs = (x.new_empty(t_len, batch, n) for _ in range(3))
    h = x.new_zeros(batch, n) if h0 is None else h0.to(x.dtype)
    c = x.new_zeros(batch, n) if c0 is None else c0.to(x.dtype)
    rec = matmul.Weight(w_hh, batch)
    # Every view the loop touches, made once: at (64, 128) a slice costs as much as the op.
    flat, i, f, g, o = (
        v.view(t_len, batch, 4 * n).unbind(0),
        *(v[:, :, k].unbind(0) for k in range(4)),
    )
    for t in range(t_len):
        torch.sigmoid(rec.plus(h, flat[t]), out=flat[t])  # (B, 4H) post-activations
        g[t].mul_(2).sub_(1)
        c = torch.mul(f[t], c, out=cs[t]).addcmul_(i[t], g[t])
        tc = torch.mul(c, 2, out=tcs[t]).sigmoid_().mul_(2).sub_(1)
        h = torch.mul(o[t], tc, out=hs[t])
    return hs, Gates(("i", "f", "g", "o"), v, cell=cs, cell_tanh=tcs)


@torch.no_grad()
def _gru_forward(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Gates]:
    if native.usable(x, w_hh):
        hs, v, hh_n = native.gru_forward(x, w_ih, w_hh, b_ih, b_hh)
        return hs, Gates(("r", "z", "n"), v, hh_n=hh_n)
    t_len, batch, _ = x.shape
    n = w_hh.shape[1]
    # n = tanh(u) = 2 sigmoid(2u) - 1 with u = W_in x + b_in + r * (W_hn h + b_hn): doubling
    # n's rows in both products doubles u (as the lstm's g above)
    w_ih, w_hh, b_ih, b_hh = (_doubled(p, 2, n) for p in (w_ih, w_hh, b_ih, b_hh))
    v = matmul.linear(x.flatten(0, 1), w_ih, b_ih).view(t_len, batch, 3, n)  # (T, B, 3, H)
    hs, hh_n = x.new_empty(t_len, batch, n), x.new_empty(t_len, batch, n)
    h = x.new_zeros(batch, n)
    rec = matmul.Weight(w_hh, batch)
    rz, r, z, nn_ = (
        v[:, :, :2].unbind(0),
        *(v[:, :, k].unbind(0) for k in range(3)),
    )
    for t in range(t_len):
        hh = rec.times(h, b_hh).view(batch, 3, n)  # (B, 3, H): W_h h_{t-1} + b_h, n's doubled
        rz[t].add_(hh[:, :2]).sigmoid_()
        torch.mul(hh[:, 2], 0.5, out=hh_n[t])  # the true W_hn h + b_hn, for the backward
        u = nn_[t].addcmul_(r[t], hh[:, 2]).sigmoid_().mul_(2).sub_(1)  # (B, H): n_t
        h = torch.sub(h, u, out=hs[t]).mul_(z[t]).add_(u)  # n + z (h_{t-1} - n)
    return hs, Gates(("r", "z", "n"), v, hh_n=hh_n)


@torch.no_grad()
def _rnn_forward(x: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor, act: str) -> Tensor:
    t_len, batch, _ = x.shape
    hs = matmul.linear(x.flatten(0, 1), w_ih, b).view(t_len, batch, -1)  # (T, B, H)
    rec = matmul.Weight(w_hh, batch)
    if act == "tanh":
        hs[0].tanh_()
        for t in range(1, t_len):
            torch.tanh(rec.plus(hs[t - 1], hs[t]), out=hs[t])
    else:  # relu as clamp_min: torch.relu has no out=; both pass NaN through
        hs[0].relu_()
        for t in range(1, t_len):
            torch.clamp_min(rec.plus(hs[t - 1], hs[t]), 0, out=hs[t])
    return hs


class _Closed(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, kind: str, box: dict, x: Tensor, *w: Tensor) -> Tensor:
        w_ih, w_hh, b_ih, b_hh = w
        if kind == "lstm":
            h, g = _lstm_forward(x, w_ih, w_hh, b_ih + b_hh)
            box["gates"] = g
            ctx.save_for_backward(x, w_ih, w_hh, h, g.values, g.cell, g.cell_tanh)
        elif kind == "gru":
            h, g = _gru_forward(x, w_ih, w_hh, b_ih, b_hh)
            box["gates"] = g
            ctx.save_for_backward(x, w_ih, w_hh, h, g.values, g.hh_n)
        else:
            h = _rnn_forward(x, w_ih, w_hh, b_ih + b_hh, kind.split(":", 1)[1])
            ctx.save_for_backward(x, w_ih, w_hh, h)
        ctx.kind, ctx.box = kind, box
        return h

    @staticmethod
    def backward(ctx: Any, direct: Tensor) -> tuple[Tensor | None, ...]:
        x, w_ih, w_hh, h, *rest = ctx.saved_tensors
        t_len, batch, n = h.shape
        direct = direct.contiguous()
        if ctx.kind == "gru":
            return _gru_backward(ctx, x, w_ih, w_hh, h, *rest, direct)
        if ctx.kind == "lstm":
            cell = torch.empty_like(h)
            dz = h.new_empty(t_len, batch, 4, n)
            g = Gates(("i", "f", "g", "o"), rest[0], cell=rest[1], cell_tanh=rest[2])
            a = adjoint._lstm(w_hh, g, direct, cell, dz_out=dz)
        else:
            cell = None
            dfdz = adjoint.activation_derivative(ctx.kind.split(":", 1)[1], None, x, h)
            a = adjoint._rnn(w_hh, dfdz, direct)
            dz = a * dfdz
        ctx.box["adjoint"] = (a, cell)
        flat = dz.view(t_len * batch, -1)  # (T*B, G*H)
        # Both weight gradients from one product: [x_t | h_{t-1}] (T*B, I+H), h_{-1} = 0.
        n_in = x.shape[-1]
        xh = x.new_empty(t_len, batch, n_in + n)
        xh[..., :n_in] = x
        xh[0, :, n_in:] = 0
        xh[1:, :, n_in:] = h[:-1]
        grad_w = matmul.t_mm(flat, xh.view(t_len * batch, -1))  # (G*H, I+H)
        grad_ih, grad_hh = grad_w[:, :n_in], grad_w[:, n_in:]
        grad_b = flat.sum(0)
        dx = None
        if ctx.needs_input_grad[2]:
            dx = matmul.linear(flat, w_ih.t().contiguous()).view(t_len, batch, -1)
        return None, None, dx, grad_ih, grad_hh, grad_b, grad_b


def _gru_backward(
    ctx: Any, x: Tensor, w_ih: Tensor, w_hh: Tensor, h: Tensor, v: Tensor, hh_n: Tensor, direct
) -> tuple[Tensor | None, ...]:
    t_len, batch, n = h.shape
    g = Gates(("r", "z", "n"), v, hh_n=hh_n)
    dz_hh = h.new_empty(t_len, batch, 3, n)  # d loss / d(W_h h_{t-1} + b_h)
    # d loss / d(W_i x_t + b_i): r's and z's the same, n's its pre-activation's (not times r)
    dz_ih = torch.empty_like(dz_hh)
    a = adjoint._gru(w_hh, g, h, direct, dz_out=dz_hh, dz_ih_out=dz_ih)
    ctx.box["adjoint"] = (a, None)
    flat_hh, flat_ih = dz_hh.view(t_len * batch, -1), dz_ih.view(t_len * batch, -1)  # (T*B, 3H)
    grad_ih = matmul.t_mm(flat_ih, x.reshape(t_len * batch, -1))  # (3H, I)
    grad_hh = matmul.t_mm(flat_hh, adjoint.shifted(h).reshape(t_len * batch, -1))  # (3H, H)
    dx = None
    if ctx.needs_input_grad[2]:
        dx = matmul.linear(flat_ih, w_ih.t().contiguous()).view(t_len, batch, -1)
    return None, None, dx, grad_ih, grad_hh, flat_ih.sum(0), flat_hh.sum(0)


CLOSED_KINDS = ("lstm", "gru", "rnn:tanh", "rnn:relu")


def closed_forward(layer: nn.Module, x: Tensor) -> Tensor | None:
    """The layer's outputs (T, B, H) through the closed-form backward, None where it has none
    (another kind, a GPU, no gradient wanted): the caller then runs the layer itself."""
    kind = layer_kind(layer)
    if kind not in CLOSED_KINDS or x.is_cuda or not torch.is_grad_enabled():
        return None
    w = (layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0)
    box: dict[str, Any] = {}
    h = _Closed.apply(kind, box, x, *w)
    adjoint.publish(h, box)
    return h


def lstm_sequence(layer: nn.Module, x: Tensor, h0: Tensor | None, c0: Tensor | None) -> Tensor:
    """An lstm layer's outputs (T, B, H) from its input and initial state, without autograd,
    its gates left for `adjoint.gates`: a recompute (gradlab.watch, the layers below the top
    of a stacked module) that then needs no second pass for the gates."""
    w = (layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0 + layer.bias_hh_l0)
    h, g = _lstm_forward(x, *w, h0, c0)
    adjoint.publish(h, {"gates": g})
    return h
