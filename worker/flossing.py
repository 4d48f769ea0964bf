"""Gradient flossing (Engelken, NeurIPS 2023): a regulariser that pushes the top Lyapunov
exponents of the recurrent dynamics toward 0, so that perturbations (and the gradients that
travel back through the same Jacobians) neither grow nor die out exponentially.

The estimate is the QR (Benettin) method along the step's own trajectory, differentiable: for
each layer, Q_0 = the first k basis vectors, then J_t Q_{t-1} = Q_t R_t with
J_t = dh_t/dh_{t-1} = diag(f'(z_t)) W_hh, and lambda_i = (1/T) sum_t ln |R_t[i, i]|. The
penalty is sum_i lambda_i^2 over the layers, the exponents averaged over the first
EXAMPLES (8) trajectories of the batch (a single 50-step trajectory's estimate is too noisy to
steer by); rnn cells only (the Jacobian's closed form)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models import RecurrentOutput

EXAMPLES = 8


def activation_slope(act: str, h: Tensor, pre: Tensor) -> Tensor:
    """f'(z) from the output h (tanh, sigmoid, relu, leaky_relu, linear) or the pre-activation."""
    if act == "tanh":
        return 1 - h * h
    if act == "sigmoid":
        return h * (1 - h)
    if act == "relu":
        return (h > 0).to(h.dtype)
    if act == "leaky_relu":
        return torch.where(h > 0, 1.0, 0.01).to(h.dtype)
    if act == "elu":
        return torch.where(pre > 0, torch.ones_like(pre), torch.exp(pre))
    return torch.ones_like(h)


def top_exponents(layer: nn.Module, act: str, x: Tensor, h: Tensor, k: int) -> Tensor:
    """Top-k Lyapunov exponents (per step, natural log) of one rnn layer along the
    trajectories h (T, B, H) driven by its input x (T, B, I), averaged over the B
    trajectories: differentiable in the weights. (T, H) and (T, I) are one trajectory."""
    if h.dim() == 2:
        h, x = h.unsqueeze(1), x.unsqueeze(1)
    w_hh = layer.weight_hh_l0
    h_prev = torch.cat([torch.zeros_like(h[:1]), h[:-1]])  # (T, B, H)
    pre = x @ layer.weight_ih_l0.T + layer.bias_ih_l0 + h_prev @ w_hh.T + layer.bias_hh_l0
    slope = activation_slope(act, h, pre)  # (T, B, H)
    eye = torch.eye(w_hh.shape[0], k, dtype=h.dtype, device=h.device)
    q = eye.expand(h.shape[1], -1, -1)  # (B, H, k)
    total = h.new_zeros(h.shape[1], k)
    for t in range(h.shape[0]):
        q, r = torch.linalg.qr(slope[t].unsqueeze(2) * (w_hh @ q))  # J_t Q: (B, H, k)
        total = total + torch.log(torch.diagonal(r, dim1=1, dim2=2).abs().clamp_min(1e-30))
    return total.mean(0) / h.shape[0]


def flossing_penalty(net: nn.Module, out: RecurrentOutput, k: int) -> Tensor:
    """sum over layers and the top k of lambda_i^2, on the batch's first EXAMPLES."""
    terms = [
        top_exponents(layer, net.activation, x[:, :EXAMPLES], h[:, :EXAMPLES], k).pow(2).sum()
        for layer, x, h in zip(net.rnn, out.inputs, out.layers, strict=True)
    ]
    return torch.stack(terms).sum()
