"""Long-memory tasks. Each makes batches time-major, (T, B, features), on the device asked."""

from core.spec import AddingTask, CopyTask, DigitsTask
from worker.datasets.adding import Adding
from worker.datasets.base import SequenceTask
from worker.datasets.copy import CopyMemory
from worker.datasets.digits import Digits


def make_task(spec: AddingTask | CopyTask | DigitsTask) -> SequenceTask:
    if spec.name == "adding":
        return Adding(spec.seq_len)
    if spec.name == "copy":
        return CopyMemory(spec.seq_len)
    return Digits(spec.read, spec.permuted)


__all__ = ["SequenceTask", "make_task"]
