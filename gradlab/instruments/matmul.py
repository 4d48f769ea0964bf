"""Products x @ w.T by oneDNN or by torch's own (MKL on the CPU), by which runs faster on
this kind of CPU; torch.addmm for float64 and on a GPU.

Why: which library wins depends on the CPU, and on its maker: MKL takes its AVX-512 kernels
on Intel's CPUs only, oneDNN on any CPU that has the instructions. On an AMD EPYC with AVX-512
oneDNN's float32 GEMMs at the closed-form layers' shapes ran at about twice MKL's speed
((64, 128) x (128, 512) 55 us against 90, (6400, 128) x (128, 512) 4.1 ms against 9.3); on an
AMD with AVX2 only (Zen 2) MKL won the weight gradient (23.3 ms against 30.7: oneDNN wants the
summed dimension innermost, which costs two transposing copies) and the per-step products tied
(130 us each); on an Intel Xeon with AVX-512 MKL won all three (96 us against 108, 11.5 ms
against 10.3 for the input product, 22.7 against 38.0 for the weight gradient) and one LSTM
layer's closed forward and backward took 138 ms by MKL, 162 by oneDNN (bench/cpu_kernels.py,
README). So oneDNN on AMD's CPUs with AVX-512, MKL elsewhere. The choice is the machine's,
not timed: timing would pick a route per process, and the two sum in their own orders, so
the same run would round differently from one process to the next (`pinned` fixes either
route).

torch's fused recurrent kernels, which the closed form is measured against, use oneDNN.
`torch.ops.mkldnn._linear_pointwise` is the op torch's own compiler emits for a linear layer
on the CPU; being private it is probed once, and anything it refuses (float64, a GPU,
`torch.backends.mkldnn.enabled = False`, a build without it) takes torch.addmm."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import Tensor

_pinned: str | None = None


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
    """Whether products with t's dtype and device can go to oneDNN."""
    return (
        t.dtype == torch.float32
        and t.device.type == "cpu"
        and torch.backends.mkldnn.enabled
        and _available()
    )


@contextmanager
def pinned(route: str | None) -> Iterator[None]:
    """Every product within takes `route` ("onednn" where it can, or "blas"; None: the
    machine's)."""
    global _pinned
    assert route in ("onednn", "blas", None)
    before, _pinned = _pinned, route
    try:
        yield
    finally:
        _pinned = before


def cpuinfo(key: str) -> str:
    """The first value of `key` in Linux's /proc/cpuinfo ('vendor_id', 'flags'), '' elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The CPU's maker as Linux reports it ('GenuineIntel', 'AuthenticAMD'), '' elsewhere."""
    return cpuinfo("vendor_id")


def prefers_onednn(capability: str, vendor: str) -> bool:
    """Whether oneDNN's products beat MKL's on a CPU of this torch capability and maker."""
    return capability.startswith("AVX512") and vendor == "AuthenticAMD"


@lru_cache
def _machine_prefers_onednn() -> bool:
    return prefers_onednn(torch.backends.cpu.get_cpu_capability(), cpu_vendor())


def _use_onednn(t: Tensor) -> bool:
    if not onednn(t) or _pinned == "blas":
        return False
    return _pinned == "onednn" or _machine_prefers_onednn()


def _dnn(x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


def linear(x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (N, K) @ w (M, K).T + bias: (N, M), a new tensor."""
    if _use_onednn(x):
        return _dnn(x, w, bias)
    return x @ w.t() if bias is None else torch.addmm(bias, x, w.t())


def accumulate(out: Tensor, x: Tensor, w: Tensor) -> Tensor:
    """out (N, M) += x (N, K) @ w (M, K).T, in place."""
    if _use_onednn(x):
        return out.add_(_dnn(x, w))
    return out.addmm_(x, w.t())


def t_mm(a: Tensor, b: Tensor) -> Tensor:
    """a (N, M).T @ b (N, K): (M, K), the sum over rows that weight gradients are."""
    if _use_onednn(a):
        return _dnn(a.t().contiguous(), b.t().contiguous())
    return a.t() @ b


class Weight:
    """w (M, K) for many products x (rows, K) @ w.T within one pass, packed once into
    oneDNN's layout for that row count (about 0.1 ms) where oneDNN is the route. The weights
    must not change while it is in use."""

    def __init__(self, w: Tensor, rows: int) -> None:
        self.w = w
        use = _use_onednn(w)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, rows) if use else None

    # The route was chosen once, here: the per-step calls below branch on it alone (a packed
    # weight is a oneDNN tensor, which addmm cannot take).

    def times(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """x @ w.T (+ bias), a new tensor."""
        if self.packed is None:
            return x @ self.w.t() if bias is None else torch.addmm(bias, x, self.w.t())
        return _dnn(x, self.packed, bias)

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
