"""Gradient and weight norms: the overflow-safe norms of the worker's gradient instrument and
the loop's clipping, and the update ratio; shared with `gradlab.watch`."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def scaled_norms(grads: list[Tensor]) -> tuple[Tensor, list[Tensor]] | None:
    """(global norm, per-tensor norms), float64, from gradients scaled by their largest entry;
    None when some entry is itself NaN or Inf (a real non-finite gradient, not an overflow)."""
    if not grads:
        return None
    peak = torch.stack(torch._foreach_norm(grads, math.inf)).max().double()
    if not torch.isfinite(peak) or peak == 0:
        return None
    scale = peak.to(grads[0].dtype)
    per = [n.double() * peak for n in torch._foreach_norm(torch._foreach_div(grads, scale))]
    return torch.stack(per).norm(), per


@torch.no_grad()
def update_ratios(params: list[Tensor], before: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Per parameter ||W_after - W_before|| / ||W_before|| and ||W_after||, 0-d tensors
    (fused kernels; a parameter that starts at zero has ratio inf until it moves)."""
    delta = torch._foreach_norm(torch._foreach_sub(params, before))
    old = torch._foreach_norm(before)
    new = torch._foreach_norm(params)
    return [d / o for d, o in zip(delta, old, strict=True)], list(new)
