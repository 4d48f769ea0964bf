"""Where did the first non-finite value come from? The search is gradlab/instruments/
nonfinite.py (shared with `gradlab.watch`); here it reads the service's own network."""

from typing import Any

from torch import Tensor, nn

from gradlab.instruments.nonfinite import locate
from models import RecurrentOutput


def locate_nonfinite(
    model: nn.Module, output: RecurrentOutput, pred: Tensor, loss: Tensor
) -> dict[str, Any]:
    """Weights, each layer's hidden states in time, the head's output, the loss, then the
    gradients in backward order."""
    return locate(model.named_parameters(), output.layers, pred, loss)
