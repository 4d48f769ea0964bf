"""Per-parameter gradient L2 norms, and the global norm, at instrumented steps; the median of
the global norm over the run and the count of norm overflows for the summary.

Read before clipping: the raw gradient is what vanishes or explodes. In float32 the plain sum
of squares overflows once entries pass ~1e19 although every entry is finite; `scaled_norms`
then computes the norms as LAPACK's nrm2 does (m ||g / m||, m = max |g|), so the true norm is
reported (in float64, even above float32's largest value) and clip-by-norm can act."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from gradlab.instruments.norms import scaled_norms
from worker.instruments.base import Instrument, Run, StepContext


class GradNorms(Instrument):
    name = "grad_norms"

    def start(self, run: Run) -> None:
        self.names = [n for n, p in run.model.named_parameters() if p.requires_grad]
        self.params = [p for p in run.model.parameters() if p.requires_grad]
        self.max_norm = 0.0
        self.norms: list[float] = []
        self.overflows = 0

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        if not run.instrumented:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        scaled = scaled_norms(grads) if ctx.norm_overflow else None
        norms = scaled[1] if scaled else torch._foreach_norm(grads)  # one fused kernel
        for name, norm in zip(self.names, norms, strict=True):
            run.recorder.record(f"grad/{name}", ctx.step, norm)
        run.recorder.record("grad_norm_total", ctx.step, ctx.grad_norm)

    def after_step(self, run: Run, ctx: StepContext) -> None:
        self.overflows += ctx.norm_overflow
        if ctx.finite:
            self.max_norm = max(self.max_norm, ctx.grad_norm_value)
            self.norms.append(ctx.grad_norm_value)

    def summary(self, run: Run) -> dict[str, Any]:
        return {
            "max_grad_norm": self.max_norm,
            "grad_norm_median": statistics.median(self.norms) if self.norms else None,
            "norm_overflow_events": self.overflows,
        }
