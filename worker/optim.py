"""Optimisers from the spec."""

from collections.abc import Iterable

import torch
from torch import Tensor

from api.schemas import OptimizerSpec


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
