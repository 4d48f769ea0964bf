"""The first finite step whose global gradient norm (before clipping) passes the diagnosis's
EXPLODING_GRAD_NORM: an `exploding` event while the run goes, for a webhook subscribed to it.

The same threshold the diagnosis applies to the largest norm at the end, so the event and the
final verdict agree. It reads the norm the loop has already brought to the host: no extra sync.
Only added to a run whose spec subscribes `exploding` (see default_instruments)."""

from __future__ import annotations

from core.diagnosis import EXPLODING_GRAD_NORM
from worker.instruments.base import Instrument, Run, StepContext


class ExplodingAlarm(Instrument):
    name = "exploding"

    def __init__(self, threshold: float = EXPLODING_GRAD_NORM) -> None:
        self.threshold = threshold

    def start(self, run: Run) -> None:
        self.fired = False

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        # A non-finite norm is the `nan` event's business, not this one's.
        if self.fired or not ctx.finite or ctx.grad_norm_value <= self.threshold:
            return
        self.fired = True
        run.recorder.event(
            ctx.step,
            "exploding",
            grad_norm=ctx.grad_norm_value,
            threshold=self.threshold,
            measure="global gradient L2 norm before clipping",
        )
