"""The adding problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015)."""

import torch
from torch import Tensor
from torch.nn import functional as F

from worker.datasets.base import SequenceTask


class Adding(SequenceTask):
    input_size = 2
    output_size = 1
    readout = "last"
    # Always answering 1.0 gives Var(U1 + U2) = 1/6.
    baseline_loss = 1.0 / 6.0
    solved_loss = 0.01

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len

    def batch(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        t = self.seq_len
        values = torch.rand(t, n, generator=gen)  # (T, B)
        half = t // 2
        first = torch.randint(0, half, (n,), generator=gen)
        second = torch.randint(half, t, (n,), generator=gen)
        markers = torch.zeros(t, n)
        cols = torch.arange(n)
        markers[first, cols] = 1.0
        markers[second, cols] = 1.0
        target = (values[first, cols] + values[second, cols]).unsqueeze(1)  # (B, 1)
        return torch.stack([values, markers], dim=2), target  # (T, B, 2), (B, 1)

    def key_inputs(self, x: Tensor) -> tuple[Tensor, slice]:
        # The two marked steps of each example, in time order: (2, B); the value channel.
        marked = x[:, :, 1].t().nonzero()  # (2B, 2) rows (example, step), sorted
        return marked[:, 1].view(-1, 2).t(), slice(0, 1)

    def ideal_credit(self, dpred: Tensor) -> Tensor:
        # target = v_1 + v_2: ideally dL/dv_k = dL/dpred for both marked values.
        return dpred.norm().expand(2)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred, target)
