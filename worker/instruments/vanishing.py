"""The first instrumented step whose temporal profile says the gradient vanished: layer 0's
ratio p[0] / p[T-1] below the diagnosis's VANISHING_RATIO (1e-3), a `vanishing` event for a
webhook subscribed to it.

The same profile and threshold as the diagnosis (which judges the last finite profile, so a
run that recovers can end `healthy` after this event). It reads the profile the temporal
instrument has just computed (that one must come first in the list), two scalars brought to
the host at instrumented steps only, and only in runs that subscribe `vanishing`."""

from __future__ import annotations

from core.diagnosis import MIN_SEQ_LEN, VANISHING_RATIO
from worker.instruments.base import Instrument, Run, StepContext
from worker.instruments.temporal import TemporalProfile


class VanishingAlarm(Instrument):
    name = "vanishing"

    def __init__(self, temporal: TemporalProfile, threshold: float = VANISHING_RATIO) -> None:
        self.temporal, self.threshold = temporal, threshold

    def start(self, run: Run) -> None:
        self.fired = False

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        if self.fired or not run.instrumented or not ctx.finite:
            return
        snap = self.temporal.last
        if snap is None or snap[0] != ctx.step or not snap[1] or snap[1][0] is None:
            return
        profile = snap[1][0]
        if profile.numel() < MIN_SEQ_LEN:
            return
        first, last = profile[[0, -1]].double().tolist()  # one transfer
        if not last > 0:  # no gradient reaches the last step: the diagnosis calls it inconclusive
            return
        ratio = first / last
        if ratio < self.threshold:
            self.fired = True
            run.recorder.event(
                ctx.step,
                "vanishing",
                ratio_first_last=ratio,
                first=first,
                last=last,
                seq_len=profile.numel(),
                layer=0,
                threshold=self.threshold,
            )
