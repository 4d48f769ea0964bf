"""What the training loop needs to know of a task."""

from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor


class SequenceTask(ABC):
    input_size: int
    output_size: int
    seq_len: int
    readout: Literal["last", "all"]  # the head reads the last step, or every step
    baseline_loss: float  # the loss of the best answer that ignores the inputs' memory
    baseline_accuracy: float | None = None  # that answer's accuracy, where it is known
    solved_loss: float | None = None  # validation loss under this counts as solved
    solved_accuracy: float | None = None  # or validation accuracy at least this
    has_accuracy: bool = False

    @abstractmethod
    def batch(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """n examples on the CPU: inputs (T, n, input_size) and targets."""

    @abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor: ...

    def accuracy(self, pred: Tensor, target: Tensor) -> Tensor | None:
        return None

    def validation(self, n: int = 256) -> tuple[Tensor, Tensor]:
        """A fixed held-out batch, the same for every seed and run."""
        return self.batch(n, torch.Generator().manual_seed(2**31 - 1))

    def is_solved(self, val_loss: float, val_accuracy: float | None) -> bool:
        if self.solved_accuracy is not None:
            return val_accuracy is not None and val_accuracy >= self.solved_accuracy
        return self.solved_loss is not None and val_loss < self.solved_loss
