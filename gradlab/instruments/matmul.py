"""Products x @ w.T by oneDNN or by torch's own (MKL on the CPU), by which runs faster on
this machine; torch.addmm for float64 and on a GPU.

Why: which library wins depends on the CPU, and not on its maker alone. On one AMD EPYC with
AVX-512 oneDNN's float32 GEMMs at the closed-form layers' shapes ran at about twice MKL's
speed ((64, 128) x (128, 512) 55 us against 90, (6400, 128) x (128, 512) 4.1 ms against 9.3);
on another (Zen 4, family 25) MKL won the per-step product (102 us against 128) and one LSTM
layer's closed forward and backward (69.6 ms against 80.2); on an AMD with AVX2 only (Zen 2)
MKL won the weight gradient and the per-step products tied; on an Intel Xeon with AVX-512 MKL
won all three (bench/cpu_kernels.py, README). So the route is measured: once per machine, on
the mix of products one closed-form layer makes (`race`), and kept in a file keyed by the
CPU and the torch build, so that every process on the machine takes the same one (the two
libraries sum in their own orders: a route timed per process would round the same run
differently from one process to the next). oneDNN must win by RACE_MARGIN; GRADLAB_PRODUCTS
= onednn | blas fixes the route for a process, `pinned` for a block.

torch's fused recurrent kernels, which the closed form is measured against, use oneDNN.
`torch.ops.mkldnn._linear_pointwise` is the op torch's own compiler emits for a linear layer
on the CPU; being private it is probed once, and anything it refuses (float64, a GPU,
`torch.backends.mkldnn.enabled = False`, a build without it) takes torch.addmm."""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

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


RACE_MARGIN = 0.9  # oneDNN must take at most this share of MKL's time: a tie stays torch's own
RACE_SHAPE = (25, 64, 128, 4)  # T, B, H, gates: a quarter of an LSTM layer at T = 100


def choose(seconds: dict[str, float]) -> str:
    """The route from the race's figures, {"onednn": s, "blas": s}."""
    return "onednn" if seconds["onednn"] <= RACE_MARGIN * seconds["blas"] else "blas"


def race(reps: int = 5) -> dict[str, float]:
    """Median seconds of each route over the products one closed-form layer makes, per step
    forward and back (x (B, H) @ W_hh.T plus the input part), the input product over the
    sequence (T*B, H) @ W_ih.T + b, and the weight gradient (T*B, G*H).T @ (T*B, H); the
    routes interleaved."""
    t_len, b, n, g = RACE_SHAPE
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(g * n, n, generator=gen), torch.randn(t_len * b, n, generator=gen)
    bias, dz = torch.randn(g * n, generator=gen), torch.randn(t_len * b, g * n, generator=gen)

    def layer(route: str) -> Callable[[], None]:
        def run() -> None:
            with pinned(route):
                packed = Weight(w, b)
                pre = linear(x, w, bias).view(t_len, b, g * n)
                for t in range(1, t_len):
                    packed.plus(x[t * b : (t + 1) * b], pre[t])
                    accumulate(pre[t - 1], x[t * b : (t + 1) * b], w)
                t_mm(dz, x)

        return run

    routes = {"onednn": layer("onednn"), "blas": layer("blas")}
    times: dict[str, list[float]] = {r: [] for r in routes}
    for fn in routes.values():
        fn()  # warm: packing, first-touch of the buffers
    for _ in range(reps):
        for route, fn in routes.items():
            start = time.perf_counter()
            fn()
            times[route].append(time.perf_counter() - start)
    return {route: statistics.median(ts) for route, ts in times.items()}


def cache_dir(kind: str) -> Path:
    """Where gradlab keeps what it made for this machine (`kind`: "native", "products")."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gradlab" / kind


def _route_file() -> Path:
    machine = "|".join(
        [torch.__version__, torch.backends.cpu.get_cpu_capability()]
        + [cpuinfo(k) for k in ("vendor_id", "cpu family", "model", "model name", "flags")]
    )
    key = hashlib.sha256(machine.encode()).hexdigest()[:16]
    return cache_dir("products") / f"route-{key}.txt"


def _filed(path: Path) -> str | None:
    try:
        route = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    return route if route in ("onednn", "blas") else None


def machine_route() -> str:
    """This machine's route, "onednn" or "blas": GRADLAB_PRODUCTS, else the one on file, else
    raced and filed (the first writer's stands for every later process)."""
    fixed = os.environ.get("GRADLAB_PRODUCTS", "")
    if fixed in ("onednn", "blas"):
        return fixed
    if fixed:
        raise ValueError(f"GRADLAB_PRODUCTS={fixed!r}: 'onednn', 'blas' or unset (raced)")
    if not (torch.backends.mkldnn.enabled and _available()):
        return "blas"
    path = _route_file()
    if (filed := _filed(path)) is not None:
        return filed
    seconds = race()
    route = choose(seconds)
    figures = " ".join(f"{r}={1e3 * s:.3f}ms" for r, s in seconds.items())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as f:
            f.write(f"{route} {figures}\n")
        try:
            os.link(f.name, path)  # refused if another process filed first: its route stands
        except FileExistsError:
            if (filed := _filed(path)) is not None:
                return filed
            os.replace(f.name, path)  # a file that does not parse: this race's replaces it
        finally:
            Path(f.name).unlink(missing_ok=True)
    except OSError:
        pass  # an unwritable cache: this process keeps its own measurement
    return route


@lru_cache
def _machine_prefers_onednn() -> bool:
    return machine_route() == "onednn"


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
