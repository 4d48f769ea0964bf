"""Saturation fractions of a recurrent layer's units and gates: shared by the worker's
Saturation instrument and `gradlab.watch`. See worker/instruments/saturation.py for what each
fraction means."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradlab.instruments import native
from gradlab.instruments.adjoint import gates, layer_kind

TANH_BOUND = 0.99  # |tanh| beyond this: derivative below 0.02
SIGMOID_MARGIN = 0.01  # sigmoid within this of 0 or 1: derivative below ~0.01


def _fraction(mask: Tensor) -> Tensor:
    # count_nonzero: an exact count, and far faster on CPU than sum/mean over a bool tensor
    return torch.count_nonzero(mask).double() / mask.numel()


def tanh_saturated(v: Tensor) -> Tensor:
    return _fraction(v.abs() > TANH_BOUND)


def sigmoid_saturated(v: Tensor) -> Tensor:
    return _fraction((v - 0.5).abs_() > 0.5 - SIGMOID_MARGIN)


def dead_relu(h: Tensor) -> Tensor:
    # h: (T, B, H) -> fraction of the H units zero everywhere
    return _fraction((h == 0).flatten(0, 1).all(dim=0))


CHUNK_ELEMENTS = 2**22  # gates compared at a time: bounds the copy, keeps float32 counts exact


def gate_saturation(names: tuple[str, ...], v: Tensor) -> dict[str, Tensor]:
    """v: (T, B, G, H) post-activation gates; slot 2 is the tanh one (lstm g, gru n), the
    others sigmoids. All gates in one pass over a time chunk: |v - centre| > bound with the
    centre and bound of each gate, written as 0/1 floats and summed, which took two thirds of
    the time of a count_nonzero gate by gate. The sums of 0/1 are exact in float32 below
    2^24 rows, which a chunk stays under."""
    t_len, batch, g, n = v.shape
    if native.usable(v) and v.is_contiguous():  # the same comparisons in one C pass
        counts = native.gate_saturation_counts(v, 2, 0.5 - SIGMOID_MARGIN, TANH_BOUND)
        fractions = counts.to(torch.float64) / (t_len * batch * n)
        return dict(zip(names, fractions.unbind(0), strict=True))
    # per unit of a (G*H) row: a (G, 1) centre broadcast over H took 3x as long as a row
    centre = v.new_full((g, n), 0.5)
    bound = v.new_full((g, n), 0.5 - SIGMOID_MARGIN)
    centre[2], bound[2] = 0.0, TANH_BOUND
    centre, bound = centre.view(-1), bound.view(-1)  # (G*H,)
    counts = torch.zeros(g, dtype=torch.float64, device=v.device)
    step = max(1, CHUNK_ELEMENTS // max(batch * g * n, 1))
    for s in range(0, t_len, step):
        rows = v[s : s + step].reshape(-1, g * n)  # (L*B, G*H)
        hits = (rows - centre).abs_().gt_(bound)  # 1 where saturated
        counts += hits.sum(0).view(g, n).sum(1, dtype=torch.float64)
    fractions = counts / (t_len * batch * n)
    return dict(zip(names, fractions.unbind(0), strict=True))


@torch.no_grad()
def layer_saturation(
    layer: nn.Module, x: Tensor, h: Tensor, h0: Tensor | None = None, c0: Tensor | None = None
) -> dict[str, Tensor]:
    """Named fractions for one layer: its input x (T, B, I), its outputs h (T, B, H), its
    initial state h0 (and c0) when not zero."""
    kind = layer_kind(layer)
    act = getattr(layer, "activation", None) if kind == "step" else None
    if kind in ("lstm", "gru"):
        g = gates(layer, x, h, h0, c0)
        return gate_saturation(g.names, g.values)
    act = kind.split(":", 1)[1] if kind and kind.startswith("rnn:") else act
    h = h.detach()
    if act == "tanh":
        return {"tanh": tanh_saturated(h)}
    if act == "sigmoid":
        return {"sigmoid": sigmoid_saturated(h)}
    if act == "relu":
        return {"dead_relu": dead_relu(h)}
    return {}
