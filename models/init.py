"""Initialisation schemes. Recurrent schemes act on each H x H gate block of W_hh, so an
orthogonal LSTM has four orthogonal blocks, each with every singular value equal to `gain`."""

import math

import torch
from torch import Tensor, nn

from models.rnn import RecurrentNet


def init_recurrent_block(w: Tensor, scheme: str, gain: float) -> None:
    """Initialise one square block in place."""
    h = w.shape[1]
    if scheme == "orthogonal":
        nn.init.orthogonal_(w, gain=gain)
    elif scheme == "identity":
        with torch.no_grad():
            w.copy_(torch.eye(h, dtype=w.dtype) * gain)
    elif scheme == "normal":
        # std gain/sqrt(H): by the circular law the spectral radius is close to `gain`.
        nn.init.normal_(w, std=gain / math.sqrt(h))
    else:
        init_dense(w, scheme, gain)


def init_dense(w: Tensor, scheme: str, gain: float = 1.0) -> None:
    if scheme == "xavier_uniform":
        nn.init.xavier_uniform_(w, gain=gain)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(w, gain=gain)
    elif scheme == "kaiming_uniform":
        nn.init.kaiming_uniform_(w, nonlinearity="relu")
        w.data.mul_(gain)
    elif scheme == "kaiming_normal":
        nn.init.kaiming_normal_(w, nonlinearity="relu")
        w.data.mul_(gain)
    elif scheme == "normal":
        nn.init.normal_(w, std=gain / math.sqrt(w.shape[1]))
    else:
        raise ValueError(f"unknown init scheme {scheme!r}")


def init_recurrent_net(net: RecurrentNet, recurrent: str, input_scheme: str, gain: float) -> None:
    """Apply the spec's schemes; 'default' keeps torch's own. Biases start at zero otherwise,
    so at step 0 the Jacobian is set by W_hh and the activation alone."""
    for layer in net.rnn:
        h = layer.hidden_size
        if recurrent != "default":
            w_hh = layer.weight_hh_l0
            for g in range(w_hh.shape[0] // h):
                init_recurrent_block(w_hh.data[g * h : (g + 1) * h], recurrent, gain)
        if input_scheme != "default":
            w_ih = layer.weight_ih_l0
            for g in range(w_ih.shape[0] // h):
                init_dense(w_ih.data[g * h : (g + 1) * h], input_scheme)
        if recurrent != "default" or input_scheme != "default":
            nn.init.zeros_(layer.bias_ih_l0)
            nn.init.zeros_(layer.bias_hh_l0)


def init_lstm_gate_biases(
    net: RecurrentNet, forget_bias: float | None = None, chrono_t_max: int | None = None
) -> None:
    """Set the lstm gates' effective biases (b_ih + b_hh, what the gates see). PyTorch has two
    bias vectors per gate: setting both to b would give 2b, so b_ih carries the value and b_hh's
    block is zero. Gate order i, f, g, o.

    forget_bias: b_f = forget_bias for every unit. chrono_t_max (Tallec & Ollivier 2018):
    b_f = log u with u ~ U(1, T_max - 1) per unit, b_i = -b_f (torch's global generator)."""
    if forget_bias is None and chrono_t_max is None:
        return
    with torch.no_grad():
        for layer in net.rnn:
            n = layer.hidden_size
            b_ih, b_hh = layer.bias_ih_l0, layer.bias_hh_l0
            if chrono_t_max is not None:
                high = max(float(chrono_t_max) - 1.0, 1.0)
                b_f = torch.empty(n, dtype=b_ih.dtype).uniform_(1.0, high).log()
                b_ih[:n], b_hh[:n] = -b_f, 0.0
            else:
                b_f = torch.full((n,), float(forget_bias), dtype=b_ih.dtype)
            b_ih[n : 2 * n], b_hh[n : 2 * n] = b_f, 0.0
