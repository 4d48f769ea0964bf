"""The instrument protocol: what a hook receives (`Run`, `StepContext`), the `Instrument` base
class, and the recorder instruments write to.

An instrument watches one quantity. The loop calls its hooks; it writes what it saw to the
recorder; the recorder is drained in batches (to the database, or to memory in tests)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.spec import ExperimentCreate
from models import RecurrentNet, RecurrentOutput
from worker.datasets import SequenceTask


@dataclass
class Batch:
    """What was recorded since the last drain: series name -> (steps, values (n, width))."""

    series: dict[str, tuple[list[int], np.ndarray]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.series or self.events)


class Recorder:
    def __init__(self) -> None:
        self._series: dict[str, tuple[list[int], list[Any]]] = {}
        self._events: list[dict[str, Any]] = []

    def record(self, name: str, step: int, value: float | Tensor | np.ndarray) -> None:
        """One value (a scalar, or a vector of fixed width) of series `name` at `step`.
        Tensors are kept as they are and converted at drain time, off the hot path."""
        steps, values = self._series.setdefault(name, ([], []))
        steps.append(step)
        values.append(value.detach() if isinstance(value, Tensor) else value)

    def event(self, step: int | None, kind: str, **detail: Any) -> None:
        self._events.append({"step": step, "kind": kind, "detail": detail})

    def drain(self) -> Batch:
        batch = Batch(events=self._events)
        for name, (steps, values) in self._series.items():
            rows = [v.cpu().double().numpy() if isinstance(v, Tensor) else v for v in values]
            batch.series[name] = (steps, np.asarray(rows, dtype=np.float64).reshape(len(steps), -1))
        self._series, self._events = {}, []
        return batch


@dataclass
class StepContext:
    """One training step as the hooks see it: the forward pass's output and prediction, the
    loss, and (after backward) the global gradient norm and what the loop did with the step."""

    step: int
    output: RecurrentOutput
    pred: Tensor
    loss: Tensor
    x: Tensor | None = None  # the batch's inputs (T, B, I) and targets
    y: Tensor | None = None
    loss_value: float = math.nan
    accuracy: float | None = None
    grad_norm: Tensor | None = None  # global L2 norm before clipping
    grad_norm_value: float = math.nan
    norm_overflow: bool = False  # every entry finite, the plain sum of squares was not
    finite: bool = True
    clipped: bool = False
    skipped: bool = False


@dataclass
class Run:
    """What instruments may look at: the spec, the task, the network and optimiser, where and
    in which dtype it runs, the recorder to write to, and whether this step is instrumented."""

    spec: ExperimentCreate
    task: SequenceTask
    model: RecurrentNet
    optimizer: torch.optim.Optimizer
    device: torch.device
    dtype: torch.dtype
    recorder: Recorder = field(default_factory=Recorder)
    instrumented: bool = False
    # Every `instrument.dynamics_every`-th instrumented step, the first included: when the
    # costly quantities (Lyapunov exponents, reach, the spectral radius) are measured.
    dynamics: bool = False


class Instrument:
    """Override the hooks you need. `run.instrumented` says whether this step is one of the
    `instrument.every` steps (`run.dynamics`: one of the costly quantities' steps among them);
    per-step instruments ignore both."""

    name: str = "instrument"
    # Reads the total adjoints dL/dh_t: instrumented steps then run the layers whose backward
    # computes them (gradlab/instruments/closed_layer.py) instead of solving them again.
    reads_adjoint: bool = False

    def start(self, run: Run) -> None:
        """Before the first step."""

    def before_backward(self, run: Run, ctx: StepContext) -> None:
        """After the forward pass, before backward: e.g. to retain_grad on hidden states."""

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        """Gradients are in .grad, before clipping and the optimiser step."""

    def after_step(self, run: Run, ctx: StepContext) -> None:
        """After the optimiser step (or the decision to skip it)."""

    def summary(self, run: Run) -> dict[str, Any]:
        """Figures for the experiment's summary at the end."""
        return {}
