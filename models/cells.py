"""An Elman RNN layer for activations torch has no fused kernel for (sigmoid, leaky ReLU,
ELU, linear). Its parameters have nn.RNN's names and shapes, so instruments and initialisers
treat both alike."""

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "leaky_relu": lambda z: F.leaky_relu(z, 0.01),
    "elu": F.elu,
    "linear": lambda z: z,
}


class ElmanLayer(nn.Module):
    """h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), time-major like nn.RNN."""

    def __init__(self, input_size: int, hidden_size: int, activation: str) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.weight_ih_l0 = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)  # nn.RNN's own default
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # x: (T, B, I)
        pre = F.linear(x, self.weight_ih_l0, self.bias_ih_l0)  # (T, B, H), all steps at once
        h = x.new_zeros(x.shape[1], self.hidden_size) if h0 is None else h0[0]  # (B, H)
        outs = []
        for t in range(x.shape[0]):
            h = self.act(pre[t] + F.linear(h, self.weight_hh_l0, self.bias_hh_l0))
            outs.append(h)
        return torch.stack(outs), h.unsqueeze(0)  # (T, B, H), (1, B, H)
