"""Products x @ w.T by oneDNN where torch has it (float32 on the CPU), by torch.addmm elsewhere.

Why: torch's CPU matmul goes to MKL, whose float32 GEMMs at the closed-form layers' shapes
ran at about half oneDNN's speed on the AMD EPYC measured (1 thread, bench/cpu_kernels.py):
(64, 128) x (128, 512) 90 us against 55 with the weight packed once, (6400, 128) x
(128, 512) 9.3 ms against 4.1.
torch's fused recurrent kernels, which the closed form is measured against, already use
oneDNN. `torch.ops.mkldnn._linear_pointwise` is the op torch's own compiler emits for a linear
layer on the CPU; being private it is probed once, and anything it refuses (float64, a GPU,
`torch.backends.mkldnn.enabled = False`, a build without it) takes torch.addmm. oneDNN sums
in its own order: results agree with addmm to rounding, not bit for bit."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


@lru_cache
def _available() -> bool:
    try:
        op = torch.ops.mkldnn._linear_pointwise
        gen = torch.Generator().manual_seed(0)
        x, w = torch.randn(8, 16, generator=gen), torch.randn(4, 16, generator=gen)
        y = op(x, w, None, "none", [], "")
        z = op.binary(x, y, torch.ops.mkldnn._reorder_linear_weight(w, 8), None, "add")
    except (AttributeError, RuntimeError):
        return False
    want = x @ w.t()
    return bool(torch.allclose(y, want, atol=1e-5) and torch.allclose(z, 2 * want, atol=1e-5))


def onednn(t: Tensor) -> bool:
    """Whether products with t's dtype and device go to oneDNN."""
    return (
        t.dtype == torch.float32
        and t.device.type == "cpu"
        and torch.backends.mkldnn.enabled
        and _available()
    )


def linear(x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (N, K) @ w (M, K).T + bias: (N, M), a new tensor."""
    if onednn(x):
        return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
    return x @ w.t() if bias is None else torch.addmm(bias, x, w.t())


def accumulate(out: Tensor, x: Tensor, w: Tensor) -> Tensor:
    """out (N, M) += x (N, K) @ w (M, K).T, in place."""
    if onednn(x):
        return out.add_(torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""))
    return out.addmm_(x, w.t())


def t_mm(a: Tensor, b: Tensor) -> Tensor:
    """a (N, M).T @ b (N, K): (M, K), the sum over rows that weight gradients are. oneDNN
    wants the summed dimension innermost: two transposing copies still leave it faster."""
    if onednn(a):
        return linear(a.t().contiguous(), b.t().contiguous())
    return a.t() @ b


class Weight:
    """w (M, K) for many products x (rows, K) @ w.T within one pass, packed once into
    oneDNN's layout for that row count (about 0.1 ms). The weights must not change while
    it is in use."""

    def __init__(self, w: Tensor, rows: int) -> None:
        self.w = w
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, rows) if onednn(w) else None

    # The route was chosen once, here: the per-step calls below branch on it alone (a packed
    # weight is a oneDNN tensor, which addmm cannot take).

    def times(self, x: Tensor) -> Tensor:
        """x @ w.T, a new tensor."""
        if self.packed is None:
            return x @ self.w.t()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")

    def plus(self, x: Tensor, add: Tensor) -> Tensor:
        """add + x @ w.T, a new tensor."""
        if self.packed is None:
            return torch.addmm(add, x, self.w.t())
        return torch.ops.mkldnn._linear_pointwise.binary(x, add, self.packed, None, "add")

    def accumulate(self, out: Tensor, x: Tensor) -> Tensor:
        """out += x @ w.T, in place."""
        if self.packed is None:
            return out.addmm_(x, self.w.t())
        return out.add_(self.times(x))
