"""Update ratio ||W_after - W_before|| / ||W_before|| and the weight norm ||W_after|| per
parameter at instrumented steps: the seeds' sign of vanishing is early layers that barely move
while later ones do. A parameter that starts at zero (a bias) has ratio inf until it moves."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from gradlab.instruments.norms import update_ratios
from worker.instruments.base import Instrument, Run, StepContext


class UpdateRatio(Instrument):
    name = "update_ratio"

    def start(self, run: Run) -> None:
        named = [(n, p) for n, p in run.model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p.detach() for _, p in named]
        self.before: list[Tensor] | None = None
        self.last: dict[str, float] = {}

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        # Snapshot before the optimiser moves: one fused copy, at instrumented steps only.
        self.before = [p.clone() for p in self.params] if run.instrumented else None

    def after_step(self, run: Run, ctx: StepContext) -> None:
        if self.before is None:
            return
        before, self.before = self.before, None
        if ctx.skipped:
            return
        ratios, new = update_ratios(self.params, before)
        for name, ratio, w in zip(self.names, ratios, new, strict=True):
            run.recorder.record(f"update_ratio/{name}", ctx.step, ratio)
            run.recorder.record(f"weight_norm/{name}", ctx.step, w)
            self.last[name] = ratio

    def summary(self, run: Run) -> dict[str, Any]:
        return {"update_ratio": {n: float(v) for n, v in self.last.items()}}
