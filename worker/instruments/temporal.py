"""Temporal profile: at instrumented steps, ||dL/dh_t|| (over batch and units) for every
layer and time step, the whole backpropagation-through-time signal. Training keeps torch's
fused modules; the totals are recovered from the outputs' own gradients (see adjoint.py).
For an lstm the same backward recursion gives the cell path ||dL/dc_t|| (series
`cell_temporal/{layer}`): a cell that keeps its memory shows a flat c-profile while the
h-profile drops.

Route chosen by measurement (bench/temporal_routes.py, 1 CPU thread, H=128, B=64): the
closed-form adjoint costs about 0.2x to 0.4x of one training step (rnn, lstm, gru; T=100, 500),
below the unrolled autograd recompute (about 0.6x to 0.9x), which stays the route for custom
layers with `step()`. Series `temporal/{layer}`: a vector of T values per instrumented step."""

from __future__ import annotations

from collections import deque
from typing import Any

from torch import Tensor, nn

from core.diagnosis import WINDOW_STEPS, profile_evidence
from models import RecurrentOutput
from worker.instruments.adjoint import hidden_adjoint, total_adjoint
from worker.instruments.base import Instrument, Run, StepContext

Profiles = list[Tensor | None]


def retain(output: RecurrentOutput) -> None:
    """Before backward: keep each layer's output gradient (the 'direct' part)."""
    for h in output.layers:
        if h.requires_grad:
            h.retain_grad()


def all_profiles(
    layers: nn.ModuleList, output: RecurrentOutput, method: str = "closed"
) -> tuple[Profiles, Profiles]:
    """After backward: per layer ||dL/dh_t|| and (lstm, closed form) ||dL/dc_t||, each a (T,)
    tensor, None where there is no route."""
    hs: Profiles = []
    cs: Profiles = []
    for layer, x, h in zip(layers, output.inputs, output.layers, strict=True):
        shared = total_adjoint(layer, x, h) if method == "closed" else None
        if shared is not None:  # the closed form, kept for the other readers of this step
            a, cell = shared
        else:
            cell = None
            a = None if h.grad is None else hidden_adjoint(layer, x, h, h.grad, method)
        hs.append(None if a is None else a.flatten(1).norm(dim=1))  # (T,)
        cs.append(None if a is None or cell is None else cell.flatten(1).norm(dim=1))
    return hs, cs


def profiles(layers: nn.ModuleList, output: RecurrentOutput, method: str = "closed") -> Profiles:
    return all_profiles(layers, output, method)[0]


def _evidence(ps: Profiles) -> list[dict[str, Any] | None]:
    return [None if p is None else profile_evidence(p.tolist()) for p in ps]


class TemporalProfile(Instrument):
    name = "temporal"
    reads_adjoint = True

    def __init__(self, method: str = "closed") -> None:
        self.method = method
        self.last: tuple[int, Profiles] | None = None  # the last finite profile
        self.first: tuple[int, Profiles] | None = None
        self.window: deque[tuple[int, Profiles, Profiles]] = deque(maxlen=WINDOW_STEPS)

    def before_backward(self, run: Run, ctx: StepContext) -> None:
        if run.instrumented:
            retain(ctx.output)

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        if not run.instrumented:
            return
        got, cells = all_profiles(run.model.rnn, ctx.output, self.method)
        for layer, (p, c) in enumerate(zip(got, cells, strict=True)):
            if p is not None:
                run.recorder.record(f"temporal/{layer}", ctx.step, p)
            if c is not None:
                run.recorder.record(f"cell_temporal/{layer}", ctx.step, c)
        if ctx.finite:
            self.last = (ctx.step, got)
            self.first = self.first or self.last
            self.window.append((ctx.step, got, cells))

    def summary(self, run: Run) -> dict[str, Any]:
        """The first and last finite profiles' evidence (ratio, log-rate, horizon per layer) for
        the diagnosis, and the window of the last finite ones (with the cell path for lstm);
        the profiles themselves are in the series."""

        def plain(snap: tuple[int, Profiles] | None) -> dict[str, Any] | None:
            return None if snap is None else {"step": snap[0], "layers": _evidence(snap[1])}

        window = []
        for step, hs, cs in self.window:
            entry: dict[str, Any] = {"step": step, "layers": _evidence(hs)}
            if run.model.cell == "lstm":
                entry["cell_layers"] = _evidence(cs)
            window.append(entry)
        return {
            "temporal_profile": {
                "first": plain(self.first),
                "last": plain(self.last),
                "window": window,
            }
        }
