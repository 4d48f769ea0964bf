"""Optimisers and the learning-rate schedule from the spec."""

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from core.spec import OptimizerSpec, ScheduleSpec


def make_optimizer(spec: OptimizerSpec, params: Iterable[Tensor]) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=spec.lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov,
            weight_decay=spec.weight_decay,
        )
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.RMSprop(
        params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )


def lr_factor(spec: ScheduleSpec, step: int, total_steps: int) -> float:
    """The schedule's multiplier of optimizer.lr at update `step` (0-based); see ScheduleSpec."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    u = step - spec.warmup_steps
    if spec.name == "step":
        return spec.gamma ** (u // spec.step_size)
    if spec.name == "cosine":
        span = max(total_steps - spec.warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(u / span, 1.0)))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set by the step index rather than stepped by a torch scheduler: a skipped update
    (nan_policy skip_step) then cannot shift the schedule, and a rerun reads the same lr."""
    for group in optimizer.param_groups:
        group["lr"] = lr
