"""The recurrent network: stacked single-layer recurrent modules and a linear head.

Each layer is its own module (torch's fused nn.RNN/LSTM/GRU where one exists, cuDNN on a
GPU) so every layer's hidden sequence is visible to the instruments, and residual
connections and dropout can sit between layers.

Two routes through the same parameters (no copies):
- per layer (`forward(x)`, the default): each layer's module in turn; `layers` and
  `inputs` hold every layer's sequence, which the instruments need on instrumented steps;
- fused (`forward(x, per_layer=False)`): where every layer is a plain torch module of one
  kind with nothing but dropout between layers, one call of torch's multi-layer kernel
  (`torch._VF.lstm` etc., what `nn.LSTM(num_layers=L).forward` calls) with the layers'
  own weights as its flat weight list; only `top` is returned. On a GPU,
  `flatten_for_cudnn()` puts every layer's weights into the one buffer cuDNN's
  multi-layer kernel wants (as nn.LSTM.flatten_parameters does for one module)."""

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from models.cells import ElmanLayer
from models.norm_cells import make_norm_layer

FUSED_RNN_ACTIVATIONS = {"tanh", "relu"}


@dataclass
class RecurrentOutput:
    top: Tensor  # (T, B, H): what the head reads
    layers: list[Tensor] = field(default_factory=list)  # per layer (T, B, H): its h_t
    inputs: list[Tensor] = field(default_factory=list)  # per layer (T, B, I_l): what it read

    @property
    def per_layer(self) -> bool:
        """False for the fused route's output: `top` only, no per-layer sequences."""
        return bool(self.layers)


FUSED_KERNELS = {
    "lstm": (nn.LSTM, "LSTM"),
    "gru": (nn.GRU, "GRU"),
    "tanh": (nn.RNN, "RNN_TANH"),
    "relu": (nn.RNN, "RNN_RELU"),
}


def make_layer(
    cell: str, activation: str | None, input_size: int, hidden: int, norm: str = "none"
) -> nn.Module:
    if norm != "none":  # normalisation sits inside the recurrence: no fused kernel has it
        return make_norm_layer(cell, activation, input_size, hidden, norm)
    if cell == "lstm":
        return nn.LSTM(input_size, hidden)
    if cell == "gru":
        return nn.GRU(input_size, hidden)
    if activation in FUSED_RNN_ACTIVATIONS:
        return nn.RNN(input_size, hidden, nonlinearity=activation)
    return ElmanLayer(input_size, hidden, activation or "tanh")


class RecurrentNet(nn.Module):
    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        cell: str = "rnn",
        activation: str | None = "tanh",
        hidden_size: int = 128,
        num_layers: int = 1,
        residual: bool = False,
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        super().__init__()
        self.cell = cell
        self.activation = activation if cell == "rnn" else None
        self.hidden_size = hidden_size
        self.residual = residual
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        # Registered under the cell's name, so that every parameter name says the cell
        # (`lstm.0.weight_hh_l0`, `gru.1.bias_ih_l0`, `rnn.0.weight_hh_l0`): the gradient norms,
        # update ratios and NaN origins a user reads are named from here.
        self.add_module(
            cell, nn.ModuleList(make_layer(cell, activation, i, hidden_size, norm) for i in sizes)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, output_size)

    @property
    def rnn(self) -> nn.ModuleList:
        """The stacked layers, whatever the cell (registered under the cell's name)."""
        layers = self._modules.get(self.cell)
        if layers is None:  # not registered yet: what hasattr() in add_module() asks
            raise AttributeError("rnn")
        return layers

    def fused_mode(self) -> str | None:
        """The multi-layer kernel's mode ('LSTM', 'GRU', 'RNN_TANH', 'RNN_RELU') when the whole
        stack can go through it, else None: more than one layer, every layer a plain torch
        module of the cell's kind, no residual between layers (dropout is the kernel's own)."""
        if len(self.rnn) < 2 or self.residual:
            return None
        kind = self.cell if self.cell != "rnn" else self.activation
        module, mode = FUSED_KERNELS.get(kind or "", (None, None))
        plain = all(type(layer) is module for layer in self.rnn)
        return mode if plain else None

    def flat_weights(self) -> list[Tensor]:
        """Every layer's (W_ih, W_hh, b_ih, b_hh) in the kernel's order; attribute access, so
        a parametrised W_hh is the parametrisation's value (with its autograd path)."""
        names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
        return [getattr(layer, n) for layer in self.rnn for n in names]

    def forward(
        self,
        x: Tensor,
        per_layer: bool = True,
        layer_call: Callable[[nn.Module, Tensor], Tensor | None] | None = None,
    ) -> RecurrentOutput:
        """x: (T, B, I). `layer_call(layer, input)`: another route through a layer on the per
        layer route (None where it has none: the layer's own then)."""
        mode = None if per_layer else self.fused_mode()
        if mode is not None:
            return RecurrentOutput(top=self._fused(x, mode))
        layers: list[Tensor] = []
        inputs: list[Tensor] = []
        inp = x
        for i, layer in enumerate(self.rnn):
            inputs.append(inp)
            h = None if layer_call is None else layer_call(layer, inp)
            if h is None:
                h, _ = layer(inp)  # (T, B, H)
            layers.append(h)
            # Residual only between hidden layers: the first layer's input has another width.
            out = h + inp if self.residual and i > 0 else h
            inp = self.dropout(out) if i < len(self.rnn) - 1 else out
        return RecurrentOutput(top=inp, layers=layers, inputs=inputs)

    def _fused(self, x: Tensor, mode: str) -> Tensor:
        n_layers, weights = len(self.rnn), self.flat_weights()
        h0 = x.new_zeros(n_layers, x.shape[1], self.hidden_size)  # (L, B, H)
        args = (weights, True, n_layers, self.dropout.p, self.training, False, False)
        with warnings.catch_warnings():
            # A stack whose weights are not in one cuDNN buffer (flatten_for_cudnn not called,
            # or a parametrised W_hh) is compacted per call: correct, only slower.
            warnings.filterwarnings("ignore", message="RNN module weights are not part")
            if mode == "LSTM":
                return torch._VF.lstm(x, (h0, h0), *args)[0]
            kernel = {"GRU": torch._VF.gru, "RNN_TANH": torch._VF.rnn_tanh}.get(mode)
            return (kernel or torch._VF.rnn_relu)(x, h0, *args)[0]

    @torch.no_grad()
    def flatten_for_cudnn(self) -> bool:
        """On CUDA with cuDNN: every layer's weights made views into one buffer in cuDNN's
        multi-layer layout (the parameters keep their identity, so an optimiser built before
        still holds them). The fused route then runs cuDNN's multi-layer kernel with no copy;
        the per-layer route (instrumented steps) compacts layers 1.. per call. Returns whether
        it did anything (not on CPU, not for a parametrised W_hh)."""
        mode = self.fused_mode()
        weights = self.flat_weights() if mode else []
        if not weights or not weights[0].is_cuda or not torch._use_cudnn_rnn_flatten_weight():
            return False
        if any(parametrize.is_parametrized(layer) for layer in self.rnn):
            return False
        from torch.backends.cudnn import rnn as cudnn_rnn

        torch._cudnn_rnn_flatten_weight(
            weights,
            4,
            self.rnn[0].input_size,
            cudnn_rnn.get_cudnn_mode(mode),
            self.hidden_size,
            0,
            len(self.rnn),
            False,
            False,
        )
        return True

    def recurrent_weights(self) -> dict[str, Tensor]:
        """Each layer's W_hh (gate blocks stacked: (G*H, H)), keyed by parameter name."""
        return {
            f"{self.cell}.{i}.weight_hh_l0": layer.weight_hh_l0 for i, layer in enumerate(self.rnn)
        }
