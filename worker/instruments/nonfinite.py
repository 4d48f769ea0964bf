"""The first non-finite step and where it came from, kept for the diagnosis (the loop's own
event goes to the database with the batch it was recorded in). Costs nothing on finite steps."""

from __future__ import annotations

from typing import Any

from worker.instruments.base import Instrument, Run, StepContext
from worker.nan_origin import locate_nonfinite


class FirstNonfinite(Instrument):
    name = "nonfinite"

    def start(self, run: Run) -> None:
        self.first: dict[str, Any] | None = None

    def after_step(self, run: Run, ctx: StepContext) -> None:
        if ctx.finite or self.first is not None:
            return
        # The update was dropped, so the model is as the failing forward/backward saw it.
        origin = locate_nonfinite(run.model, ctx.output, ctx.pred, ctx.loss)
        self.first = {"step": ctx.step, "origin": origin}

    def summary(self, run: Run) -> dict[str, Any]:
        return {"first_nonfinite": self.first}
