"""Forget-gate statistics per lstm layer at instrumented steps, over every (t, example, unit)
of the batch: the mean forget gate and the fractions above 0.95 (the cell keeps its memory)
and below 0.05 (it wipes it). Series `gates/{layer}/forget_mean`, `.../forget_near_1`,
`.../forget_near_0`. The gates come from the shared recompute (adjoint.gates), computed once
per step for every instrument that reads them."""

from __future__ import annotations

from collections import deque
from typing import Any

import torch

from core.diagnosis import WINDOW_STEPS
from worker.instruments.adjoint import gates, layer_kind
from worker.instruments.base import Instrument, Run, StepContext

NEAR_1, NEAR_0 = 0.95, 0.05


class ForgetGates(Instrument):
    name = "gates"

    def start(self, run: Run) -> None:
        self.window: deque[dict[str, Any]] = deque(maxlen=WINDOW_STEPS)

    @torch.no_grad()
    def after_backward(self, run: Run, ctx: StepContext) -> None:
        if not run.instrumented:
            return
        stats = []
        out = ctx.output
        for i, (layer, x, h) in enumerate(zip(run.model.rnn, out.inputs, out.layers, strict=True)):
            if layer_kind(layer) != "lstm":
                continue
            # (T, B, H), copied out of the gate tensor once: comparisons and sums over the
            # strided slice cost about five times as much as over a contiguous copy.
            f = gates(layer, x, h).values[:, :, 1].contiguous()
            n = f.numel()
            row = torch.stack(
                [
                    f.sum(dtype=torch.float64) / n,
                    torch.count_nonzero(f > NEAR_1) / n,
                    torch.count_nonzero(f < NEAR_0) / n,
                ]
            ).double()
            for name, v in zip(("forget_mean", "forget_near_1", "forget_near_0"), row, strict=True):
                run.recorder.record(f"gates/{i}/{name}", ctx.step, v)
            stats.append(row)
        if stats and ctx.finite:
            layers = [
                dict(
                    zip(("forget_mean", "forget_near_1", "forget_near_0"), r.tolist(), strict=True)
                )
                for r in stats
            ]
            self.window.append({"step": ctx.step, "layers": layers})

    def summary(self, run: Run) -> dict[str, Any]:
        return {"gates": {"window": list(self.window)} if run.model.cell == "lstm" else None}
