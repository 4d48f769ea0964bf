"""The recurrent spectrum of W_hh per gate block: shared by the worker's Spectrum instrument
and `gradlab.watch`."""

from __future__ import annotations

import torch
from torch import Tensor

BLOCKS = {1: ("hh",), 3: ("r", "z", "n"), 4: ("i", "f", "g", "o")}


@torch.no_grad()
def block_spectrum(w_hh: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Per gate block of a stacked (G*H, H) matrix: (sigma_max, spectral radius), 0-d."""
    n = w_hh.shape[1]
    blocks = w_hh.detach().reshape(-1, n, n)  # (G, H, H)
    sigma = torch.linalg.svdvals(blocks)[:, 0]  # (G,): svdvals come sorted, largest first
    radius = torch.linalg.eigvals(blocks).abs().amax(dim=1)  # (G,)
    names = BLOCKS.get(blocks.shape[0], tuple(str(g) for g in range(blocks.shape[0])))
    return {b: (sigma[g], radius[g]) for g, b in enumerate(names)}
