"""Clipping: whether it fired (every step, 1 or 0), and the global gradient norm after it at
instrumented steps (the norm before it is GradNorms' grad_norm_total). The post-clip norm is
measured from the gradients themselves after the optimiser step (which reads .grad and does
not rewrite it), not assumed from max_norm."""

from __future__ import annotations

from typing import Any

import torch

from worker.instruments.base import Instrument, Run, StepContext


class Clipping(Instrument):
    name = "clipping"

    def start(self, run: Run) -> None:
        self.params = [p for p in run.model.parameters() if p.requires_grad]
        self.fired = self.seen = 0

    def after_step(self, run: Run, ctx: StepContext) -> None:
        if ctx.skipped:  # no update, no clipping: the NaN event records the step
            return
        self.seen += 1
        self.fired += ctx.clipped
        run.recorder.record("clip/fired", ctx.step, float(ctx.clipped))
        if run.instrumented:
            grads = [p.grad for p in self.params if p.grad is not None]
            run.recorder.record("clip/after", ctx.step, torch.nn.utils.get_total_norm(grads))

    def summary(self, run: Run) -> dict[str, Any]:
        return {
            "clip_fired_steps": self.fired,
            "clip_fired_fraction": self.fired / max(self.seen, 1),
        }
