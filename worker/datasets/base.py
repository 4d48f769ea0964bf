"""What the training loop needs to know of a task."""

import math
from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor

# Held-out examples for the generated tasks. With 256 the constant answer's MSE on the adding
# problem had a sampling s.d. of 0.012 (0.151 at T=200, 0.180 at T=50 against 1/6), so a
# constant predictor could "beat the baseline"; with 4096 the s.d. is about 0.003.
VAL_SIZE = 4096


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

    def validation(self, n: int = VAL_SIZE) -> tuple[Tensor, Tensor]:
        """A fixed held-out set, the same for every seed and run."""
        return self.batch(n, torch.Generator().manual_seed(2**31 - 1))

    def constant_baseline(self, target: Tensor) -> float:
        """The loss of the best answer that ignores the inputs, on these very targets (the
        theoretical `baseline_loss` is its expectation): classification, the entropy of the
        classes' frequencies; regression, the variance. Targets (B,) or (B, k)."""
        if target.is_floating_point():
            return float(((target - target.mean(0)) ** 2).mean())
        return entropy(target)

    def key_inputs(self, x: Tensor) -> tuple[Tensor, slice] | None:
        """Where the task's information sits in a batch x (T, B, I): the time step of each key
        input per example (K, B) and the input channels that carry it; None where it sits
        nowhere in particular (the credit instrument then reports the profile over the input)."""
        return None

    def ideal_credit(self, dpred: Tensor) -> Tensor | None:
        """Per key input, the norm over the batch of dL/d(key input) under ideal credit
        assignment, from the gradient of the loss w.r.t. the prediction: (K,); None where no
        ideal is known (an uploaded dataset: the credit is reported without a ratio)."""
        return None

    def step_losses(self, pred: Tensor, target: Tensor) -> Tensor | None:
        """Where the loss has a term at more than one step: those terms, (T, B), summing to
        `loss(pred, target)`; None where the loss is read at one step."""
        return None

    def recall_steps(self) -> list[int]:
        """The loss steps whose terms need the task's memory (copy: where the symbols are
        recalled); [] for a task with one loss step."""
        return []

    def is_solved(self, val_loss: float, val_accuracy: float | None) -> bool:
        if self.solved_accuracy is not None:
            return val_accuracy is not None and val_accuracy >= self.solved_accuracy
        return self.solved_loss is not None and val_loss < self.solved_loss


def entropy(labels: Tensor) -> float:
    """Mean cross-entropy of the best constant distribution: the entropy of the frequencies."""
    freq = torch.bincount(labels.flatten()).double() / labels.numel()
    freq = freq[freq > 0]
    return float(-(freq * freq.log()).sum()) if len(freq) else math.nan
