"""Where did the first non-finite value come from? Shared by the worker (worker/nan_origin.py)
and `gradlab.watch`. Run only when a cheap per-step check trips (the loss, the global gradient
norm), so the search costs nothing on healthy steps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def first_bad_time_step(h: Tensor) -> int | None:
    # h: (T, B, H)
    bad = ~torch.isfinite(h).flatten(1).all(dim=1)  # (T,)
    return int(bad.nonzero()[0]) if bad.any() else None


def locate(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    layers: Sequence[Tensor],
    pred: Tensor | None = None,
    loss: Tensor | None = None,
) -> dict[str, Any]:
    """Walk the computation in the order it ran: weights, each recurrent layer's hidden states
    (T, B, H) in time, the head's output, the loss, then the gradients in the order backward
    produced them (the reverse of the parameters' order)."""
    named = list(named_parameters)
    with torch.no_grad():
        for name, p in named:
            if not torch.isfinite(p).all():
                return {"where": "weight", "parameter": name}
        for layer, h in enumerate(layers):
            t = first_bad_time_step(h.detach())
            if t is not None:
                return {"where": "activation", "layer": layer, "time_step": t}
        if pred is not None and not torch.isfinite(pred).all():
            return {"where": "output"}
        if loss is not None and not torch.isfinite(loss).all():
            return {"where": "loss"}
        bad = [
            name
            for name, p in reversed(named)
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        if bad:
            return {"where": "gradient", "parameter": bad[0], "parameters": bad}
        # Every gradient is finite but their global norm is not: it overflowed the dtype.
        largest = max(
            ((n, float(p.grad.abs().max())) for n, p in named if p.grad is not None),
            key=lambda item: item[1],
            default=(None, None),
        )
    return {"where": "grad_norm", "parameter": largest[0], "max_abs_grad": largest[1]}
