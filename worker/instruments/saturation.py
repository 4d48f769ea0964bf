"""Saturation per layer at instrumented steps, over every (t, example, unit) of the batch:

- tanh units (an rnn's h, an lstm's g gate, a gru's n gate): fraction with |value| > 0.99;
- sigmoid units (an rnn's h, lstm i/f/o, gru r/z): fraction below 0.01 or above 0.99;
- relu (rnn): fraction of dead units, a unit being dead when it is exactly 0 for every
  example at every time step of the batch (it then passes no gradient at all this step).
Leaky ReLU, ELU and linear units neither saturate nor die and get no series."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from gradlab.instruments.saturation import layer_saturation
from worker.instruments.base import Instrument, Run, StepContext


class Saturation(Instrument):
    name = "saturation"

    def start(self, run: Run) -> None:
        self.last: dict[str, dict[str, Tensor]] = {}

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        if not run.instrumented:
            return
        out = ctx.output
        for i, (layer, x, h) in enumerate(zip(run.model.rnn, out.inputs, out.layers, strict=True)):
            fractions = layer_saturation(layer, x, h)
            for name, value in fractions.items():
                run.recorder.record(f"saturation/{i}/{name}", ctx.step, value)
            if fractions:
                self.last[str(i)] = fractions

    def summary(self, run: Run) -> dict[str, Any]:
        return {
            "saturation": {i: {k: float(v) for k, v in d.items()} for i, d in self.last.items()}
        }
