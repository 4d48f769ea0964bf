"""Copy memory (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016)."""

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from worker.datasets.base import SequenceTask, entropy

N_SYMBOLS = 8
N_COPY = 10
BLANK, DELIMITER = 0, N_SYMBOLS + 1  # symbols are 1..8


class CopyMemory(SequenceTask):
    """10 symbols, seq_len - 1 blanks, a delimiter, 10 blanks; the target is blanks until the
    delimiter has passed, then the 10 symbols. Loss: cross-entropy averaged over every step."""

    input_size = N_SYMBOLS + 2
    output_size = N_SYMBOLS + 1
    readout = "all"
    has_accuracy = True
    solved_accuracy = 0.99  # of the 10 recalled symbols, on the validation batch

    def __init__(self, delay: int) -> None:
        self.delay = delay
        self.seq_len = delay + 2 * N_COPY
        # Blanks then uniform guesses over the 8 symbols for the last 10 steps.
        self.baseline_loss = N_COPY * math.log(N_SYMBOLS) / self.seq_len

    def batch(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        symbols = torch.randint(1, N_SYMBOLS + 1, (N_COPY, n), generator=gen)  # (10, B)
        seq = torch.full((self.seq_len, n), BLANK, dtype=torch.long)
        seq[:N_COPY] = symbols
        seq[self.seq_len - N_COPY - 1] = DELIMITER
        target = torch.full((self.seq_len, n), BLANK, dtype=torch.long)
        target[-N_COPY:] = symbols
        x = F.one_hot(seq, self.input_size).float()  # (T, B, 10)
        return x, target  # (T, B, 10), (T, B)

    def key_inputs(self, x: Tensor) -> tuple[Tensor, slice]:
        steps = torch.arange(N_COPY, device=x.device)
        return steps.unsqueeze(1).expand(N_COPY, x.shape[1]), slice(None)  # (10, B), one-hot

    def ideal_credit(self, dpred: Tensor) -> Tensor:
        # Symbol k is recalled at step T - 10 + k: ideally the gradient its input receives is
        # as large as the one its recall step's logits receive.
        return dpred[-N_COPY:].flatten(1).norm(dim=1)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        # pred: (T, B, 9)
        return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))

    def constant_baseline(self, target: Tensor) -> float:
        """Best answer per position that ignores the inputs: the entropy of each position's
        symbols (0 for the blanks), averaged over the T + 20 positions. target: (T, B)."""
        return sum(entropy(row) for row in target) / target.shape[0]

    def step_losses(self, pred: Tensor, target: Tensor) -> Tensor:
        t_len, b = target.shape
        per = F.cross_entropy(
            pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none"
        )
        return per.view(t_len, b) / (t_len * b)  # (T, B): the mean as a sum

    def recall_steps(self) -> list[int]:
        return list(range(self.seq_len - N_COPY, self.seq_len))

    def accuracy(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred[-N_COPY:].argmax(-1) == target[-N_COPY:]).float().mean()
