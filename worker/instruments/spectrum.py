"""Recurrent spectrum: largest singular value and spectral radius of each layer's W_hh, per
gate block (lstm i,f,g,o; gru r,z,n; rnn one block 'hh'), at instrumented steps.

sigma_max against 1/gamma (Pascanu et al. 2013) says whether vanishing is guaranteed; the
radius is what powers of W_hh alone grow or shrink by in the long run."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradlab.instruments.spectrum import block_spectrum
from worker.instruments.base import Instrument, Run, StepContext


class Spectrum(Instrument):
    name = "spectrum"

    def start(self, run: Run) -> None:
        self.last: dict[str, dict[str, dict[str, float]]] = {}
        self.layers = [
            (i, layer.weight_hh_l0)
            for i, layer in enumerate(run.model.rnn)
            if isinstance(getattr(layer, "weight_hh_l0", None), Tensor)
        ]

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        if not run.instrumented:
            return
        for i, w in self.layers:
            if not torch.isfinite(w).all():  # eig of a NaN matrix raises; the NaN event tells
                continue
            spec = block_spectrum(w)
            for block, (sigma, radius) in spec.items():
                run.recorder.record(f"spectrum/{i}/{block}/sigma_max", ctx.step, sigma)
                run.recorder.record(f"spectrum/{i}/{block}/radius", ctx.step, radius)
            self.last[str(i)] = {b: {"sigma_max": s, "radius": r} for b, (s, r) in spec.items()}

    def summary(self, run: Run) -> dict[str, Any]:
        return {
            "spectrum": {
                layer: {b: {k: float(v) for k, v in d.items()} for b, d in blocks.items()}
                for layer, blocks in self.last.items()
            }
        }
