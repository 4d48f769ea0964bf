"""Recurrent spectrum: largest singular value and spectral radius of each layer's W_hh, per
gate block (lstm i,f,g,o; gru r,z,n; rnn one block 'hh'), at instrumented steps.

sigma_max against 1/gamma (Pascanu et al. 2013) says whether vanishing is guaranteed; the
radius is what powers of W_hh alone grow or shrink by in the long run."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from worker.instruments.base import Instrument, Run, StepContext

BLOCKS = {1: ("hh",), 3: ("r", "z", "n"), 4: ("i", "f", "g", "o")}


@torch.no_grad()
def block_spectrum(w_hh: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Per gate block of a stacked (G*H, H) matrix: (sigma_max, spectral radius), 0-d."""
    n = w_hh.shape[1]
    blocks = w_hh.detach().reshape(-1, n, n)  # (G, H, H)
    # sigma_max^2 is the Gram matrix's largest eigenvalue: a symmetric solve, exact to the
    # dtype's rounding and 3x cheaper than svdvals (bench/spectrum_methods.py).
    # Scaled by each block's largest |entry| first: finite weights past ~1e19 would overflow
    # the float32 Gram matrix (svdvals never squares them).
    scale = blocks.abs().amax(dim=(1, 2)).clamp_min(torch.finfo(blocks.dtype).tiny)  # (G,)
    unit = blocks / scale[:, None, None]
    gram = unit.mT @ unit  # (G, H, H), entries at most H
    sigma = torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0).sqrt() * scale  # ascending order
    # The radius needs the eigenvalues themselves: Krylov (Arnoldi) estimates miss it by 1-10 %
    # on orthogonal blocks (every |lambda| equal, the default init) unless the subspace is as
    # costly as the dense solve, so it stays exact.
    radius = torch.linalg.eigvals(blocks).abs().amax(dim=1)  # (G,)
    names = BLOCKS.get(blocks.shape[0], tuple(str(g) for g in range(blocks.shape[0])))
    return {b: (sigma[g], radius[g]) for g, b in enumerate(names)}


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
