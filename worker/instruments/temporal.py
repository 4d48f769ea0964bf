"""Temporal profile: at instrumented steps, ||dL/dh_t|| (over batch and units) for every
layer and time step, the whole backpropagation-through-time signal. Training keeps torch's
fused modules; the totals are recovered from the outputs' own gradients (see adjoint.py).

Route chosen by measurement (bench/temporal_routes.py, 1 CPU thread, H=128, B=64): the
closed-form adjoint costs about 0.2x to 0.4x of one training step (rnn, lstm, gru; T=100, 500),
below the unrolled autograd recompute (about 0.6x to 0.9x), which stays the route for custom
layers with `step()`. Series `temporal/{layer}`: a vector of T values per instrumented step.

The summary keeps, for the diagnosis, the evidence of the first and last finite profiles and a
window of the last WINDOW_STEPS finite ones (per layer, and for an lstm its cell path
||dL/dc_t|| as `cell_layers`), oldest first."""

from __future__ import annotations

from collections import deque
from typing import Any

from torch import Tensor, nn

from core.diagnosis import WINDOW_STEPS, profile_evidence
from models import RecurrentOutput
from worker.instruments.adjoint import hidden_adjoint
from worker.instruments.base import Instrument, Run, StepContext


def retain(output: RecurrentOutput) -> None:
    """Before backward: keep each layer's output gradient (the 'direct' part)."""
    for h in output.layers:
        if h.requires_grad:
            h.retain_grad()


def profiles(
    layers: nn.ModuleList,
    output: RecurrentOutput,
    method: str = "closed",
    cells: list[Tensor | None] | None = None,
) -> list[Tensor | None]:
    """After backward: per layer ||dL/dh_t|| as a (T,) tensor, None where it has no route.
    With `cells` (a list to fill): per layer ||dL/dc_t|| (T,) for an lstm's closed form, else
    None."""
    out: list[Tensor | None] = []
    for layer, x, h in zip(layers, output.inputs, output.layers, strict=True):
        want_cell = cells is not None and isinstance(layer, nn.LSTM) and method == "closed"
        c = h.new_zeros(h.shape[0]) if want_cell and h.grad is not None else None
        a = None if h.grad is None else hidden_adjoint(layer, x, h, h.grad, method, c)
        out.append(None if a is None else a.flatten(1).norm(dim=1))  # (T,)
        if cells is not None:
            cells.append(c if a is not None else None)
    return out


class TemporalProfile(Instrument):
    name = "temporal"

    def __init__(self, method: str = "closed") -> None:
        self.method = method
        self.last: tuple[int, list[Tensor | None]] | None = None  # the last finite profile
        self.first: tuple[int, list[Tensor | None]] | None = None
        self.window: deque[tuple[int, list[Tensor | None], list[Tensor | None]]] = deque(
            maxlen=WINDOW_STEPS
        )

    def before_backward(self, run: Run, ctx: StepContext) -> None:
        if run.instrumented:
            retain(ctx.output)

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        if not run.instrumented:
            return
        cells: list[Tensor | None] = []
        got = profiles(run.model.rnn, ctx.output, self.method, cells)
        for layer, p in enumerate(got):
            if p is not None:
                run.recorder.record(f"temporal/{layer}", ctx.step, p)
        if ctx.finite:
            self.last = (ctx.step, got)
            self.first = self.first or self.last
            self.window.append((ctx.step, got, cells))

    def summary(self, run: Run) -> dict[str, Any]:
        """The first and last finite profiles' evidence (ratio, log-rate, horizon per layer) for
        the diagnosis; the profiles themselves are in the series."""

        def plain(snap: tuple[int, list[Tensor | None]] | None) -> dict[str, Any] | None:
            if snap is None:
                return None
            step, ps = snap
            return {
                "step": step,
                "layers": [None if p is None else profile_evidence(p.tolist()) for p in ps],
            }

        def evidence(ps: list[Tensor | None]) -> list[dict[str, Any] | None]:
            return [None if p is None else profile_evidence(p.tolist()) for p in ps]

        window = []
        lstm = run.spec.model.cell == "lstm"
        for step, ps, cs in self.window:
            entry: dict[str, Any] = {"step": step, "layers": evidence(ps)}
            if lstm:
                entry["cell_layers"] = evidence(cs)
            window.append(entry)
        return {
            "temporal_profile": {
                "first": plain(self.first),
                "last": plain(self.last),
                "window": window,
            }
        }
