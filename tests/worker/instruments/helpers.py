"""Small specs and a probe instrument for the instrument tests."""

from typing import Any

import torch

from core.spec import ExperimentCreate
from worker.instruments.base import Instrument


def small_spec(**over: Any) -> ExperimentCreate:
    base: dict[str, Any] = {
        "task": {"name": "adding", "seq_len": 12},
        "model": {"cell": "rnn", "hidden_size": 8},
        "train": {"steps": 3, "batch_size": 8, "device": "cpu"},
        "instrument": {"every": 1},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value}
    return ExperimentCreate.model_validate(base)


class Probe(Instrument):
    """Copies of every parameter and its gradient after backward, keyed by step."""

    def __init__(self) -> None:
        self.seen: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    def after_backward(self, run, ctx) -> None:  # noqa: ANN001
        self.seen[ctx.step] = {
            n: (p.detach().clone(), p.grad.detach().clone())
            for n, p in run.model.named_parameters()
            if p.grad is not None
        }
