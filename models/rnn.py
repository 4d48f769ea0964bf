"""The recurrent network: stacked single-layer recurrent modules and a linear head.

Each layer is its own module (torch's fused nn.RNN/LSTM/GRU where one exists, cuDNN on a
GPU) so every layer's hidden sequence is visible to the instruments, and residual
connections and dropout can sit between layers."""

from dataclasses import dataclass

from torch import Tensor, nn

from models.cells import ElmanLayer
from models.norm_cells import make_norm_layer

FUSED_RNN_ACTIVATIONS = {"tanh", "relu"}


@dataclass
class RecurrentOutput:
    top: Tensor  # (T, B, H): what the head reads
    layers: list[Tensor]  # per layer (T, B, H): that layer's hidden states h_t
    inputs: list[Tensor]  # per layer (T, B, I_l): what that layer read


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
        self.rnn = nn.ModuleList(make_layer(cell, activation, i, hidden_size, norm) for i in sizes)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> RecurrentOutput:
        # x: (T, B, I)
        layers: list[Tensor] = []
        inputs: list[Tensor] = []
        inp = x
        for i, layer in enumerate(self.rnn):
            inputs.append(inp)
            h, _ = layer(inp)  # (T, B, H)
            layers.append(h)
            # Residual only between hidden layers: the first layer's input has another width.
            out = h + inp if self.residual and i > 0 else h
            inp = self.dropout(out) if i < len(self.rnn) - 1 else out
        return RecurrentOutput(top=inp, layers=layers, inputs=inputs)

    def recurrent_weights(self) -> dict[str, Tensor]:
        """Each layer's W_hh (gate blocks stacked: (G*H, H)), keyed by parameter name."""
        return {f"rnn.{i}.weight_hh_l0": layer.weight_hh_l0 for i, layer in enumerate(self.rnn)}
