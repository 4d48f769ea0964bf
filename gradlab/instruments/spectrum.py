"""The recurrent spectrum of W_hh per gate block: shared by the worker's Spectrum instrument
and `gradlab.watch`."""

from __future__ import annotations

import torch
from torch import Tensor

BLOCKS = {1: ("hh",), 3: ("r", "z", "n"), 4: ("i", "f", "g", "o")}


def _blocks(w_hh: Tensor) -> tuple[Tensor, tuple[str, ...]]:
    n = w_hh.shape[1]
    blocks = w_hh.detach().reshape(-1, n, n)  # (G, H, H)
    return blocks, BLOCKS.get(blocks.shape[0], tuple(str(g) for g in range(blocks.shape[0])))


@torch.no_grad()
def block_sigma_max(w_hh: Tensor) -> dict[str, Tensor]:
    """Per gate block of a stacked (G*H, H) matrix: its largest singular value, 0-d."""
    blocks, names = _blocks(w_hh)
    # sigma_max^2 is the Gram matrix's largest eigenvalue: a symmetric solve, exact to the
    # dtype's rounding and 3x cheaper than svdvals (bench/spectrum_methods.py).
    # Scaled by each block's largest |entry| first: finite weights past ~1e19 would overflow
    # the float32 Gram matrix (svdvals never squares them).
    scale = blocks.abs().amax(dim=(1, 2)).clamp_min(torch.finfo(blocks.dtype).tiny)  # (G,)
    unit = blocks / scale[:, None, None]
    gram = unit.mT @ unit  # (G, H, H), entries at most H
    sigma = torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0).sqrt() * scale  # ascending order
    return dict(zip(names, sigma.unbind(0), strict=True))


@torch.no_grad()
def block_radius(w_hh: Tensor) -> dict[str, Tensor]:
    """Per gate block: the spectral radius, 0-d. A dense nonsymmetric eigensolve (3.5 ms a
    128 x 128 block on one CPU thread, 8x the sigma_max above): Krylov (Arnoldi) estimates
    miss it by 1-10 % on orthogonal blocks (every |lambda| equal, the default init) unless
    the subspace is as costly as the dense solve, so it stays exact."""
    blocks, names = _blocks(w_hh)
    radius = torch.linalg.eigvals(blocks).abs().amax(dim=1)  # (G,)
    return dict(zip(names, radius.unbind(0), strict=True))


def block_spectrum(w_hh: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Per gate block of a stacked (G*H, H) matrix: (sigma_max, spectral radius), 0-d."""
    sigma, radius = block_sigma_max(w_hh), block_radius(w_hh)
    return {b: (sigma[b], radius[b]) for b in sigma}
