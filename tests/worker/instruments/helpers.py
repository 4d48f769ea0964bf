"""A probe instrument for the instrument tests (their specs: tests/factories.make_spec)."""

import torch

from worker.instruments.base import Instrument


class Probe(Instrument):
    """Copies of every parameter and its gradient after backward, keyed by step."""

    def __init__(self) -> None:
        self.seen: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    def after_backward(self, run, ctx) -> None:
        self.seen[ctx.step] = {
            n: (p.detach().clone(), p.grad.detach().clone())
            for n, p in run.model.named_parameters()
            if p.grad is not None
        }
