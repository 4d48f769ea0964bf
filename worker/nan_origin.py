"""Where did the first non-finite value come from? Run only when the cheap per-step check
(loss and global gradient norm) trips, so the search costs nothing on healthy steps."""

from typing import Any

import torch
from torch import Tensor, nn

from models import RecurrentOutput


def _first_bad_time_step(h: Tensor) -> int | None:
    # h: (T, B, H)
    bad = ~torch.isfinite(h).flatten(1).all(dim=1)  # (T,)
    return int(bad.nonzero()[0]) if bad.any() else None


def locate_nonfinite(
    model: nn.Module, output: RecurrentOutput, pred: Tensor, loss: Tensor
) -> dict[str, Any]:
    """Walk the computation in the order it ran: weights, each layer's hidden states in time,
    the head's output, the loss, then the gradients in the order backward produced them."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return {"where": "weight", "parameter": name}
    for layer, h in enumerate(output.layers):
        t = _first_bad_time_step(h.detach())
        if t is not None:
            return {"where": "activation", "layer": layer, "time_step": t}
    if not torch.isfinite(pred).all():
        return {"where": "output"}
    if not torch.isfinite(loss).all():
        return {"where": "loss"}
    # Backward runs from the head down to the first layer: report in that order.
    bad = [
        name
        for name, p in reversed(list(model.named_parameters()))
        if p.grad is not None and not torch.isfinite(p.grad).all()
    ]
    if bad:
        return {"where": "gradient", "parameter": bad[0], "parameters": bad}
    # Every gradient is finite but their global norm is not: it overflowed the dtype.
    largest = max(
        ((n, float(p.grad.abs().max())) for n, p in model.named_parameters() if p.grad is not None),
        key=lambda item: item[1],
        default=(None, None),
    )
    return {"where": "grad_norm", "parameter": largest[0], "max_abs_grad": largest[1]}
