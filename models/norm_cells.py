"""Recurrent layers with normalisation inside the recurrence: a python loop over time.

Both kinds normalise the input term W_ih x_t and the recurrent term W_hh h_{t-1} separately,
each H-wide gate block on its own, before the biases are added (Cooijmans et al. 2016, eq. 6;
Ba et al. 2016 do the same for their LSTM), and an LSTM also normalises its cell state before
the output tanh:

    z_t = N_ih(W_ih x_t) + b_ih + N_hh(W_hh h_{t-1}) + b_hh
    lstm: h_t = o_t * tanh(N_c(c_t))

- `layer` (Ba, Kiros, Hinton 2016): each gate block is normalised over its H features, per
  example and per time step; gains start at 1.
- `batch` (Cooijmans et al. 2016, "Recurrent Batch Normalization"): each feature is normalised
  over the batch, with separate statistics for every time step. Training uses the batch's
  statistics at that step and updates a running mean/variance per step (momentum 0.1, unbiased
  variance, as nn.BatchNorm1d). Evaluation uses the running statistics of step t; steps beyond
  the longest sequence trained on use those of the last trained step (the paper's choice);
  before any training step, mean 0 and variance 1. Gains start at 0.1 (the paper, section 4: a
  unit gain saturates tanh and the gradient vanishes).

N_ih and N_hh have a gain and no shift (b_ih, b_hh already shift); N_c has both. Parameters
W and b carry nn.RNN/LSTM/GRU's names, shapes and gate orders (lstm i,f,g,o; gru r,z,n), so
initialisers and instruments treat these layers like torch's. Each layer has `step(x_t, state)
-> state`, one time step with the same arithmetic as `forward`, for instruments that unroll.
"""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.cells import ACTIVATIONS

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
BN_GAIN = 0.1
EPS = 1e-5

State = Tensor | tuple[Tensor, Tensor]


class GateLayerNorm(nn.Module):
    """LayerNorm over each of `gates` blocks of `hidden` features."""

    def __init__(self, gates: int, hidden: int, *, shift: bool) -> None:
        super().__init__()
        self.gates, self.hidden = gates, hidden
        self.weight = nn.Parameter(torch.ones(gates * hidden))
        self.bias = nn.Parameter(torch.zeros(gates * hidden)) if shift else None

    def forward(self, z: Tensor, t: int = 0, update: bool = False) -> Tensor:
        # z: (..., G*H); t and update are for the batch-norm interface, per position here
        blocks = z.reshape(*z.shape[:-1], self.gates, self.hidden)  # (..., G, H)
        n = F.layer_norm(blocks, (self.hidden,), eps=EPS).reshape(z.shape)
        return n * self.weight if self.bias is None else torch.addcmul(self.bias, n, self.weight)


class StepBatchNorm(nn.Module):
    """Batch norm with statistics per time step and gain/shift shared across time."""

    def __init__(self, features: int, *, shift: bool, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.weight = nn.Parameter(torch.full((features,), BN_GAIN))
        self.bias = nn.Parameter(torch.zeros(features)) if shift else None
        # Row t holds step t's statistics; rows are added as longer sequences are trained on.
        self.register_buffer("running_mean", torch.zeros(0, features))
        self.register_buffer("running_var", torch.zeros(0, features))

    @property
    def trained_steps(self) -> int:
        return self.running_mean.shape[0]

    def forward(self, z: Tensor, t: int = 0, update: bool = False) -> Tensor:
        """z: (B, F) at time step t, or (T, B, F) for steps t .. t+T-1. `update` (training
        mode only) folds this batch's statistics into the running ones."""
        n_steps = z.shape[0] if z.dim() == 3 else 1
        if self.training:
            mean = z.mean(dim=-2, keepdim=True)  # (T, 1, F) or (1, F)
            var = z.var(dim=-2, unbiased=False, keepdim=True)
            if update:
                self._update(t, n_steps, mean.detach(), var.detach(), z.shape[-2])
        else:
            mean, var = self._population(t, n_steps, z)
        n = (z - mean) * torch.rsqrt(var + EPS)
        return n * self.weight if self.bias is None else torch.addcmul(self.bias, n, self.weight)

    @torch.no_grad()
    def _update(self, t: int, n_steps: int, mean: Tensor, var: Tensor, batch: int) -> None:
        need = t + n_steps - self.trained_steps
        if need > 0:
            f = self.running_mean.shape[1]
            self.running_mean = torch.cat([self.running_mean, mean.new_zeros(need, f)])
            self.running_var = torch.cat([self.running_var, mean.new_ones(need, f)])
        unbiased = var * (batch / (batch - 1)) if batch > 1 else var
        m = self.momentum
        self.running_mean[t : t + n_steps].lerp_(mean.reshape(n_steps, -1), m)
        self.running_var[t : t + n_steps].lerp_(unbiased.reshape(n_steps, -1), m)

    def _population(self, t: int, n_steps: int, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.trained_steps == 0:
            return z.new_zeros(()), z.new_ones(())
        idx = torch.arange(t, t + n_steps, device=z.device).clamp_(max=self.trained_steps - 1)
        mean, var = self.running_mean[idx], self.running_var[idx]  # (T, F)
        if z.dim() == 3:
            return mean.unsqueeze(1), var.unsqueeze(1)  # (T, 1, F)
        return mean, var  # (1, F)


def make_norm(norm: str, gates: int, hidden: int, *, shift: bool) -> nn.Module:
    if norm == "layer":
        return GateLayerNorm(gates, hidden, shift=shift)
    if norm == "batch":
        return StepBatchNorm(gates * hidden, shift=shift)
    raise ValueError(f"unknown norm {norm!r}")


class NormRecurrentLayer(nn.Module):
    """Shared parts: parameters, the loop over time, and `step`. Subclasses define `_cell`."""

    cell: str

    def __init__(self, input_size: int, hidden_size: int, norm: str) -> None:
        super().__init__()
        g = GATES[self.cell]
        self.hidden_size = hidden_size
        self.norm = norm
        self.weight_ih_l0 = nn.Parameter(torch.empty(g * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(g * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(g * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(g * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)  # torch's own default for its recurrent modules
        for p in (self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0):
            nn.init.uniform_(p, -bound, bound)
        self.norm_ih = make_norm(norm, g, hidden_size, shift=False)
        self.norm_hh = make_norm(norm, g, hidden_size, shift=False)
        self._t = -1  # the time step of the last `step` call

    def _input_term(self, x: Tensor, t: int, update: bool) -> Tensor:
        return self.norm_ih(F.linear(x, self.weight_ih_l0), t, update) + self.bias_ih_l0

    def _recurrent_term(self, h: Tensor, t: int, update: bool) -> Tensor:
        return self.norm_hh(F.linear(h, self.weight_hh_l0), t, update) + self.bias_hh_l0

    def _cell(self, gi: Tensor, state: State, t: int, update: bool) -> State:
        raise NotImplementedError

    def _zero_state(self, x: Tensor) -> State:
        return x.new_zeros(x.shape[-2], self.hidden_size)

    def step(self, x_t: Tensor, state: State | None, t: int | None = None) -> State:
        """One time step: x_t (B, I), state h (B, H) or (h, c) for lstm, None for the zero
        initial state. Batch norm needs the step's index: `t`, or by default 0 when state is
        None and one more than the previous call otherwise (an unrolled loop). Never changes
        the running statistics, so an instrument may unroll a layer at no cost to training."""
        if t is None:
            t = 0 if state is None else self._t + 1
        self._t = t
        if state is None:
            state = self._zero_state(x_t)
        return self._cell(self._input_term(x_t, t, False), state, t, False)

    def forward(self, x: Tensor, h0: State | None = None) -> tuple[Tensor, State]:
        """x: (T, B, I); h0 as torch's modules take it ((1, B, H), or a pair for lstm).
        Returns the hidden states (T, B, H) and the final state in torch's layout."""
        update = self.training
        gi = self._input_term(x, 0, update)  # (T, B, G*H): every step's input term at once
        if h0 is None:
            state = self._zero_state(x[0])
        elif isinstance(h0, Tensor):
            state = h0[0]
        else:
            state = (h0[0][0], h0[1][0])
        outs = []
        for t in range(x.shape[0]):
            state = self._cell(gi[t], state, t, update)
            outs.append(state if isinstance(state, Tensor) else state[0])
        if isinstance(state, Tensor):
            return torch.stack(outs), state.unsqueeze(0)  # (T, B, H), (1, B, H)
        return torch.stack(outs), (state[0].unsqueeze(0), state[1].unsqueeze(0))


class NormRNNLayer(NormRecurrentLayer):
    """h_t = f(z_t) for any activation f of models.cells.ACTIVATIONS."""

    cell = "rnn"

    def __init__(self, input_size: int, hidden_size: int, norm: str, activation: str) -> None:
        super().__init__(input_size, hidden_size, norm)
        self.activation = activation
        self.act = ACTIVATIONS[activation]

    def _cell(self, gi: Tensor, state: State, t: int, update: bool) -> State:
        assert isinstance(state, Tensor)
        return self.act(gi + self._recurrent_term(state, t, update))  # (B, H)


class NormLSTMLayer(NormRecurrentLayer):
    cell = "lstm"

    def __init__(self, input_size: int, hidden_size: int, norm: str) -> None:
        super().__init__(input_size, hidden_size, norm)
        self.norm_c = make_norm(norm, 1, hidden_size, shift=True)

    def _zero_state(self, x: Tensor) -> State:
        z = x.new_zeros(x.shape[-2], self.hidden_size)
        return z, z

    def _cell(self, gi: Tensor, state: State, t: int, update: bool) -> State:
        h, c = state
        z = gi + self._recurrent_term(h, t, update)  # (B, 4H)
        i, f, g, o = z.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(self.norm_c(c, t, update))
        return h, c


class NormGRULayer(NormRecurrentLayer):
    cell = "gru"

    def _cell(self, gi: Tensor, state: State, t: int, update: bool) -> State:
        assert isinstance(state, Tensor)
        gh = self._recurrent_term(state, t, update)  # (B, 3H)
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return torch.lerp(n, state, z)  # (1 - z) * n + z * h_{t-1}


def make_norm_layer(
    cell: str, activation: str | None, input_size: int, hidden: int, norm: str
) -> NormRecurrentLayer:
    if cell == "lstm":
        return NormLSTMLayer(input_size, hidden, norm)
    if cell == "gru":
        return NormGRULayer(input_size, hidden, norm)
    return NormRNNLayer(input_size, hidden, norm, activation or "tanh")
