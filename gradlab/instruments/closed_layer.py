"""A recurrent layer whose backward pass is the closed-form adjoint (adjoint.py): on the steps
an instrument reads dL/dh_t, the training step's own backward computes it, instead of torch's
backward followed by the same recursion again.

The forward runs the layer step by step without autograd, keeping what the backward needs (the
gates, for an lstm the cell states); the backward solves a_t = direct_t + J_{t+1}^T a_{t+1}
(the total adjoint, what the temporal profile reports), takes the parameter and input
gradients from the pre-activation gradients with one GEMM each, and leaves the adjoint, the
cell path and the gates where `adjoint.total_adjoint` and `adjoint.gates` find them. Same
mathematics as torch's backward, another summation order: gradients agree to rounding, not
bit for bit. The forward takes tanh as 2 sigmoid(2z) - 1 (torch's CPU tanh costs 6x its
sigmoid): exact to an absolute ~1e-7 in float32 rather than a relative one, which only
values under ~1e-5 notice. CPU only: on a GPU a step-by-step loop would cost a kernel launch
per operation.

Why: with two layers of 128 at T = 100 the fused per-layer step and the adjoint after it took
about 150 ms a layer, this one about 105 (fused forward and backward alone: about 85), on an
older machine. Its products are oneDNN's (matmul.py): on today's, 50 ms a layer against the
fused kernel's 31, 73 with MKL's (bench/cpu_kernels.py)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gradlab.instruments import adjoint, matmul
from gradlab.instruments.adjoint import Gates, layer_kind


def _g_doubled(t: Tensor, n: int) -> Tensor:
    """A copy of an lstm weight or bias (4H, ...) with the g gate's rows times 2: exact in
    binary floating point, so the pre-activations come out as 2z for g."""
    t = t.clone()
    t[2 * n : 3 * n].mul_(2)
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
    t_len, batch, _ = x.shape
    n = w_hh.shape[1]
    # tanh z = 2 sigmoid(2z) - 1: torch's CPU tanh costs 6x its sigmoid, and with g's rows
    # doubled one sigmoid over the contiguous (B, 4H) row serves all four gates.
    w_ih, w_hh, b = (_g_doubled(p, n) for p in (w_ih, w_hh, b))
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


CLOSED_KINDS = ("lstm", "rnn:tanh", "rnn:relu")


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
