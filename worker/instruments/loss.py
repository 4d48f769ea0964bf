"""Training loss (and accuracy, where the task has one) at every step."""

from typing import Any

from worker.instruments.base import Instrument


class LossCurve(Instrument):
    name = "loss"

    def __init__(self, tail: int = 50) -> None:
        self.tail = tail  # final_loss averages the last `tail` finite steps: one batch is noisy
        self.recent: list[float] = []

    def after_step(self, run, ctx) -> None:
        run.recorder.record("loss", ctx.step, ctx.loss_value)
        if ctx.accuracy is not None:
            run.recorder.record("accuracy", ctx.step, ctx.accuracy)
        if ctx.finite:
            self.recent = (self.recent + [ctx.loss_value])[-self.tail :]

    def summary(self, run) -> dict[str, Any]:
        return {"final_loss": sum(self.recent) / len(self.recent) if self.recent else None}
