"""Reach of each loss term, for tasks with a loss at more than one step (copy): the adjoint of
the term L_s alone, ||dL_s/dh^l_t|| for every t <= s, per layer, where the total derivative
would mix each step's own loss with credit propagated from later terms.

On the batch's first EXAMPLES examples, for at most MAX_TERMS loss steps s (the recall steps
and evenly spaced earlier ones), the network is replayed once with the examples repeated a
block per term, each block's loss masked to its own step: one backward gives every term's
direct gradients, and the closed-form adjoint (adjoint.py) their totals. The replay runs
without dropout (its masks cannot be replayed); layers with normalisation are not covered.

- `reach/{layer}`: over lags tau = 0 .. min recall step, sqrt(sum over the recall terms of
  ||dL_s/dh_{s-tau}||^2) (norms over examples and units);
- `reach/{layer}/matrix`: ||dL_s/dh_{s-tau}|| for tau in `lags` x s in `terms` (row-major,
  NaN where tau > s), bounded at MAX_LAGS x MAX_TERMS;
- `reach/{layer}/w_hh_split`: Pascanu et al. (2013)'s split of the recall terms' dL/dW_hh by
  lag s - t, summed over the lag bins `split_bins` ([lo, hi)): the Frobenius norm of each
  bin's part (the parts sum to the recall terms' dL/dW_hh exactly).
Summary, per layer: the least-squares log-rate per step of the reach over lags 1.. (lag 0 is
the term's own injection), and the RMS of ||dL_s/dh_k|| over recall terms and key (symbol)
steps k over the RMS of ||dL_s/dh_s||. Runs every `instrument.dynamics_every`-th
instrumented step, as Lyapunov does."""

from __future__ import annotations

from collections import deque
from typing import Any

import torch

from core import series
from core.diagnosis import WINDOW_STEPS
from worker.instruments.base import Instrument, Run, StepContext
from worker.instruments.per_term import (
    MAX_LAGS,
    log_rate,
    matrix_lags,
    split_bins,
    term_adjoints,
    term_steps,
)

EXAMPLES = 4


class Reach(Instrument):
    name = "reach"

    def start(self, run: Run) -> None:
        self.window: deque[dict[str, Any]] = deque(maxlen=WINDOW_STEPS)
        self.on = bool(run.task.recall_steps()) and run.spec.model.norm == "none"
        t_len = run.task.seq_len
        self.terms = term_steps(t_len, run.task.recall_steps())
        self.lags, self.bins = matrix_lags(t_len, MAX_LAGS), split_bins(t_len)

    @torch.no_grad()
    def after_backward(self, run: Run, ctx: StepContext) -> None:
        if not (self.on and run.dynamics and ctx.finite):
            return
        recall = run.task.recall_steps()
        keys = run.task.key_inputs(ctx.x)
        layers = []
        for i, got in enumerate(term_adjoints(run, ctx, self.terms, recall, EXAMPLES, self.bins)):
            run.recorder.record(series.name(series.REACH, i), ctx.step, got.reach)
            run.recorder.record(
                series.name(series.REACH, i, "matrix"), ctx.step, got.matrix(self.lags)
            )
            run.recorder.record(series.name(series.REACH, i, "w_hh_split"), ctx.step, got.split)
            ratio = None if keys is None else got.key_to_loss(keys[0])
            layers.append(
                {
                    "log_rate_per_step": log_rate(got.reach[1:]),
                    "ratio_key_to_loss": ratio,
                    "w_hh_split": got.split.tolist(),
                }
            )
        self.window.append({"step": ctx.step, "layers": layers})

    def summary(self, run: Run) -> dict[str, Any]:
        if not self.on:
            return {"reach": None}
        return {
            "reach": {
                "window": list(self.window),
                "terms": self.terms,
                "recall": run.task.recall_steps(),
                "lags": self.lags,
                "split_bins": self.bins,
                "examples": EXAMPLES,
            }
        }
