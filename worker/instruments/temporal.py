"""Temporal profile: at instrumented steps, ||dL/dh_t|| (over batch and units) for every
layer and time step, the whole backpropagation-through-time signal. Training keeps torch's
fused modules; the totals are recovered from the outputs' own gradients (see adjoint.py).

Route chosen by measurement (bench/temporal_routes.py, 1 CPU thread, H=128, B=64): the
closed-form adjoint costs about 0.2x to 0.4x of one training step (rnn, lstm, gru; T=100, 500),
below the unrolled autograd recompute (about 0.6x to 0.9x), which stays the route for custom
layers with `step()`. Series `temporal/{layer}`: a vector of T values per instrumented step."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from core.diagnosis import profile_evidence
from models import RecurrentOutput
from worker.instruments.adjoint import hidden_adjoint
from worker.instruments.base import Instrument, Run, StepContext


def retain(output: RecurrentOutput) -> None:
    """Before backward: keep each layer's output gradient (the 'direct' part)."""
    for h in output.layers:
        if h.requires_grad:
            h.retain_grad()


def profiles(
    layers: nn.ModuleList, output: RecurrentOutput, method: str = "closed"
) -> list[Tensor | None]:
    """After backward: per layer ||dL/dh_t|| as a (T,) tensor, None where it has no route."""
    out: list[Tensor | None] = []
    for layer, x, h in zip(layers, output.inputs, output.layers, strict=True):
        a = None if h.grad is None else hidden_adjoint(layer, x, h, h.grad, method)
        out.append(None if a is None else a.flatten(1).norm(dim=1))  # (T,)
    return out


class TemporalProfile(Instrument):
    name = "temporal"

    def __init__(self, method: str = "closed") -> None:
        self.method = method
        self.last: tuple[int, list[Tensor | None]] | None = None  # the last finite profile
        self.first: tuple[int, list[Tensor | None]] | None = None

    def before_backward(self, run: Run, ctx: StepContext) -> None:
        if run.instrumented:
            retain(ctx.output)

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        if not run.instrumented:
            return
        got = profiles(run.model.rnn, ctx.output, self.method)
        for layer, p in enumerate(got):
            if p is not None:
                run.recorder.record(f"temporal/{layer}", ctx.step, p)
        if ctx.finite:
            self.last = (ctx.step, got)
            self.first = self.first or self.last

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

        return {"temporal_profile": {"first": plain(self.first), "last": plain(self.last)}}
