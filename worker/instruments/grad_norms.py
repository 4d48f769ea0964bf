"""Per-parameter gradient L2 norms, and the global norm, at instrumented steps.

Read before clipping: the raw gradient is what vanishes or explodes."""

import torch

from worker.instruments.base import Instrument


class GradNorms(Instrument):
    name = "grad_norms"

    def start(self, run) -> None:
        self.names = [n for n, p in run.model.named_parameters() if p.requires_grad]
        self.params = [p for p in run.model.parameters() if p.requires_grad]
        self.max_norm = 0.0

    def after_backward(self, run, ctx) -> None:
        if not run.instrumented:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        norms = torch._foreach_norm(grads)  # one fused kernel over all parameters
        for name, norm in zip(self.names, norms, strict=True):
            run.recorder.record(f"grad/{name}", ctx.step, norm)
        run.recorder.record("grad_norm_total", ctx.step, ctx.grad_norm)

    def after_step(self, run, ctx) -> None:
        if ctx.finite:
            self.max_norm = max(self.max_norm, ctx.grad_norm_value)

    def summary(self, run) -> dict:
        return {"max_grad_norm": self.max_norm}
