"""Recurrent spectrum: largest singular value and spectral radius of each layer's W_hh, per
gate block (lstm i,f,g,o; gru r,z,n; rnn one block 'hh').

sigma_max against 1/gamma (Pascanu et al. 2013) says whether vanishing is guaranteed; it is
recorded at every instrumented step. The radius is what powers of W_hh alone grow or shrink
by in the long run; a dense eigensolve costing 8x sigma_max, it is recorded with the other
costly quantities (every `instrument.dynamics_every`-th instrumented step) and at the last
step; the summary says which step its radius is from (`radius_step`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradlab.instruments.spectrum import block_radius, block_sigma_max
from worker.instruments.base import Instrument, Run, StepContext


class Spectrum(Instrument):
    name = "spectrum"

    def start(self, run: Run) -> None:
        self.last: dict[str, dict[str, dict[str, Tensor | int]]] = {}
        self.layers = [
            (i, layer.weight_hh_l0)
            for i, layer in enumerate(run.model.rnn)
            if isinstance(getattr(layer, "weight_hh_l0", None), Tensor)
        ]

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        if not run.instrumented:
            return
        with_radius = run.dynamics or ctx.step == run.spec.train.steps - 1
        for i, w in self.layers:
            if not torch.isfinite(w).all():  # eig of a NaN matrix raises; the NaN event tells
                continue
            last = self.last.setdefault(str(i), {})
            for block, sigma in block_sigma_max(w).items():
                run.recorder.record(f"spectrum/{i}/{block}/sigma_max", ctx.step, sigma)
                last.setdefault(block, {})["sigma_max"] = sigma
            for block, radius in (block_radius(w) if with_radius else {}).items():
                run.recorder.record(f"spectrum/{i}/{block}/radius", ctx.step, radius)
                # a run that stops early (cancelled, out of time) has an older radius
                last[block].update(radius=radius, radius_step=ctx.step)

    def summary(self, run: Run) -> dict[str, Any]:
        return {
            "spectrum": {
                layer: {
                    b: {k: v if isinstance(v, int) else float(v) for k, v in d.items()}
                    for b, d in blocks.items()
                }
                for layer, blocks in self.last.items()
            }
        }
