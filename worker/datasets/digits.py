"""scikit-learn's 8x8 handwritten digits (shipped in the package) read as a sequence."""

import math
from functools import lru_cache

import torch
from torch import Tensor
from torch.nn import functional as F

from worker.datasets.base import SequenceTask

VAL_FRACTION = 0.2


@lru_cache
def _split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32) / 16.0  # (N, 8, 8) in [0, 1]
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_val = int(len(y) * VAL_FRACTION)
    val, tr = order[:n_val], order[n_val:]
    return x[tr], y[tr], x[val], y[val]


class Digits(SequenceTask):
    output_size = 10
    readout = "last"
    has_accuracy = True
    baseline_loss = math.log(10)  # a uniform guess over the ten classes
    solved_accuracy = 0.9

    def __init__(self, read: str, permuted: bool) -> None:
        self.read = read
        self.input_size = 8 if read == "rows" else 1
        self.seq_len = 8 if read == "rows" else 64
        # One fixed permutation for every run, so permuted results compare across seeds.
        self.perm = (
            torch.randperm(64, generator=torch.Generator().manual_seed(1)) if permuted else None
        )

    def _as_sequence(self, images: Tensor) -> Tensor:
        flat = images.reshape(len(images), 64)  # (B, 64)
        if self.perm is not None:
            flat = flat[:, self.perm]
        return flat.reshape(len(images), self.seq_len, self.input_size).transpose(0, 1)

    def batch(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x_tr, y_tr, _, _ = _split()
        idx = torch.randint(0, len(y_tr), (n,), generator=gen)
        return self._as_sequence(x_tr[idx]), y_tr[idx]  # (T, B, I), (B,)

    def validation(self, n: int = 0) -> tuple[Tensor, Tensor]:
        _, _, x_val, y_val = _split()  # the whole held-out split, whatever n
        return self._as_sequence(x_val), y_val

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(pred, target)

    def accuracy(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred.argmax(-1) == target).float().mean()
