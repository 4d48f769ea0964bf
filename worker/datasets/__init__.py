"""Long-memory tasks. Each makes batches time-major, (T, B, features), on the device asked."""

from core.spec import Task
from worker.datasets.adding import Adding
from worker.datasets.base import SequenceTask
from worker.datasets.copy import CopyMemory
from worker.datasets.digits import Digits


def make_task(spec: Task) -> SequenceTask:
    """A built-in task; an uploaded dataset is read by the runner (worker/datasets/uploaded.py:
    load_task), which needs the database, and handed to train() as `task`."""
    if spec.name == "dataset":
        raise ValueError("an uploaded dataset is loaded with uploaded.load_task, not make_task")
    if spec.name == "adding":
        return Adding(spec.seq_len)
    if spec.name == "copy":
        return CopyMemory(spec.seq_len)
    return Digits(spec.read, spec.permuted)


__all__ = ["SequenceTask", "make_task"]
