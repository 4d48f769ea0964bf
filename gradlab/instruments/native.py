"""The C kernels under native/, compiled at first use with the machine's C compiler into a
cache directory and loaded with ctypes: no build step at install, no torch headers (the
kernels take raw float32 pointers; torch keeps the GEMMs). Where no compiler works, or with
GRADLAB_NATIVE=0, `library()` is None and the callers keep torch's own ops.

Why C: at batch 64 and hidden 128 one time step of an LSTM's gate arithmetic is ~10 torch ops
of a few microseconds each, most of it per-op overhead and passes over memory; the kernel is
one pass (bench/cpu_kernels.py). -march=native: the library is built on, and for, the
machine that loads it; the cache key holds the source's hash and the CPU's flags."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from gradlab.instruments import matmul

SOURCE = Path(__file__).with_name("native") / "gates.c"
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno"]


def _build(source: Path) -> Path | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    machine = matmul.cpuinfo("flags")  # -march=native builds for this CPU's instructions
    key = hashlib.sha256(source.read_bytes() + " ".join(FLAGS).encode() + machine.encode())
    target = matmul.cache_dir("native") / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # built beside the target and renamed: a process loading it never sees half a file
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            subprocess.run(
                [cc, *FLAGS, "-o", str(out), str(source)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            os.replace(out, target)
    except (OSError, subprocess.SubprocessError):
        return None
    return target


@lru_cache
def library() -> ctypes.CDLL | None:
    """The kernels (native/gates.c), None where they cannot be built or are turned off."""
    if os.environ.get("GRADLAB_NATIVE", "1") == "0":
        return None
    path = _build(SOURCE)
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.lstm_forward_step.argtypes = [p, p, p, p, p, i64, i64]
    lib.lstm_backward_step.argtypes = [p, p, p, p, p, p, p, i64, i64]
    lib.gru_forward_step.argtypes = [p, p, i64, p, p, p, i64, i64]
    lib.gru_backward_step.argtypes = [p, p, p, p, p, p, p, i64, i64]
    f32 = ctypes.c_float
    lib.gate_saturation_counts.argtypes = [p, i64, i64, i64, i64, f32, f32, p]
    for name in (
        "lstm_forward_step",
        "lstm_backward_step",
        "gru_forward_step",
        "gru_backward_step",
        "gate_saturation_counts",
    ):
        getattr(lib, name).restype = None
    return lib


_off = False


@contextmanager
def off() -> Iterator[None]:
    """Within, `usable` says no: the callers take torch's own ops (tests hold both routes)."""
    global _off
    before, _off = _off, True
    try:
        yield
    finally:
        _off = before


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def usable(*tensors: Tensor | None) -> bool:
    """Whether the kernels can take these tensors: float32, on the CPU, the library built."""
    return (
        not _off
        and all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu") for t in tensors)
        and (library() is not None)
    )


@torch.no_grad()
def lstm_forward(
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    c0: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """An lstm layer's outputs h (T, B, H), its post-activation gates (T, B, 4, H), cell
    states and their tanh (T, B, H); b the summed biases. Callers check `usable` first."""
    lib = library()
    t_len, batch, _ = x.shape
    n = w_hh.shape[1]
    v = matmul.linear(x.flatten(0, 1), w_ih, b).view(t_len, batch, 4, n)  # (T, B, 4, H)
    hs, cs, tcs = (x.new_empty(t_len, batch, n) for _ in range(3))
    h = None if h0 is None else h0.to(x.dtype).contiguous()
    c = None if c0 is None else c0.to(x.dtype).contiguous()
    rec = matmul.Weight(w_hh, batch)
    flat = v.view(t_len, batch, 4 * n).unbind(0)  # views made once: each costs as an op
    row, gate_row = batch * n * 4, batch * 4 * n * 4  # bytes a step
    vp, hp, cp, tp = v.data_ptr(), hs.data_ptr(), cs.data_ptr(), tcs.data_ptr()
    c_prev = _ptr(c)
    for t in range(t_len):
        if h is not None:  # h_{-1} = 0 adds nothing
            rec.accumulate(flat[t], h)
        lib.lstm_forward_step(
            vp + t * gate_row, c_prev, cp + t * row, tp + t * row, hp + t * row, batch, n
        )
        h, c_prev = hs[t], cp + t * row
    return hs, v, cs, tcs


@torch.no_grad()
def lstm_adjoint(
    w_hh: Tensor,
    v: Tensor,
    c: Tensor,
    tc: Tensor | None,
    direct: Tensor,
    cell_out: Tensor,
    c0: Tensor | None = None,
    cell_direct: Tensor | None = None,
    dz_out: Tensor | None = None,
) -> Tensor:
    """adjoint._lstm by the kernels: dL/dh_t (T, B, H), the total dL/dc_t into cell_out, the
    pre-activation gradients into dz_out (T, B, 4, H) when given. Callers check `usable`."""
    lib = library()
    t_len, batch, n = direct.shape
    v, c = v.contiguous(), c.contiguous()
    tc = torch.tanh(c) if tc is None else tc.contiguous()
    a = direct.contiguous().clone()
    carry = torch.zeros_like(a[0]) if cell_direct is None else cell_direct.to(a.dtype).clone()
    c0 = None if c0 is None else c0.to(a.dtype).contiguous()
    assert cell_out.is_contiguous() and (dz_out is None or dz_out.is_contiguous())
    dz = a.new_empty(1, batch, 4, n).expand(t_len, -1, -1, -1) if dz_out is None else dz_out
    a_t, dz_t = a.unbind(0), dz.flatten(2).unbind(0)
    rec = matmul.Weight(w_hh.t().contiguous(), batch)
    row, gate_row = batch * n * 4, batch * 4 * n * 4
    vp, cp, tp, ap, acp = (t.data_ptr() for t in (v, c, tc, a, cell_out))
    dzp, dz_row = dz.data_ptr(), dz.stride(0) * 4  # stride 0 without dz_out: one buffer
    for t in range(t_len - 1, -1, -1):
        c_prev = cp + (t - 1) * row if t > 0 else _ptr(c0)
        lib.lstm_backward_step(
            vp + t * gate_row,
            c_prev,
            tp + t * row,
            ap + t * row,
            carry.data_ptr(),
            acp + t * row,
            dzp + t * dz_row,
            batch,
            n,
        )
        if t > 0:
            rec.accumulate(a_t[t - 1], dz_t[t])
    return a


@torch.no_grad()
def gru_forward(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """A gru layer's outputs h (T, B, H), post-activation gates (T, B, 3, H) and W_hn h_{t-1}
    + b_hn (T, B, H), from a zero initial state. Callers check `usable` first."""
    lib = library()
    t_len, batch, _ = x.shape
    n = w_hh.shape[1]
    v = matmul.linear(x.flatten(0, 1), w_ih, b_ih).view(t_len, batch, 3, n)  # (T, B, 3, H)
    hs, hh_n = x.new_empty(t_len, batch, n), x.new_empty(t_len, batch, n)
    b_hh = b_hh.contiguous()
    rec = matmul.Weight(w_hh, batch)
    row, gate_row = batch * n * 4, batch * 3 * n * 4
    vp, hp, np_ = v.data_ptr(), hs.data_ptr(), hh_n.data_ptr()
    for t in range(t_len):
        if t == 0:  # h_{-1} = 0: the recurrent product is the bias, one row for every example
            hh, hh_row, h_prev = b_hh, 0, None
        else:
            hh, hh_row, h_prev = rec.times(hs[t - 1], b_hh), 3 * n, hp + (t - 1) * row
        lib.gru_forward_step(
            vp + t * gate_row, hh.data_ptr(), hh_row, h_prev, np_ + t * row, hp + t * row, batch, n
        )
    return hs, v, hh_n


@torch.no_grad()
def gru_adjoint(
    w_hh: Tensor,
    v: Tensor,
    hh_n: Tensor,
    h: Tensor,
    direct: Tensor,
    h0: Tensor | None = None,
    dz_out: Tensor | None = None,
    dz_ih_out: Tensor | None = None,
) -> Tensor:
    """adjoint._gru by the kernels: dL/dh_t (T, B, H); the gradients of the recurrent
    products' outputs into dz_out and of the input products' into dz_ih_out (T, B, 3, H) when
    given. Callers check `usable`."""
    lib = library()
    t_len, batch, n = direct.shape
    v, hh_n, h = v.contiguous(), hh_n.contiguous(), h.contiguous()
    h0 = None if h0 is None else h0.to(h.dtype).contiguous()
    a = direct.contiguous().clone()
    assert dz_out is None or dz_out.is_contiguous()
    assert dz_ih_out is None or dz_ih_out.is_contiguous()
    dz = a.new_empty(1, batch, 3, n).expand(t_len, -1, -1, -1) if dz_out is None else dz_out
    dz_t = dz.flatten(2).unbind(0)
    a_t = a.unbind(0)
    rec = matmul.Weight(w_hh.t().contiguous(), batch)
    row, gate_row = batch * n * 4, batch * 3 * n * 4
    vp, np_, hp, ap = v.data_ptr(), hh_n.data_ptr(), h.data_ptr(), a.data_ptr()
    dzp, dz_row = dz.data_ptr(), dz.stride(0) * 4  # stride 0 without dz_out: one buffer
    ihp = _ptr(dz_ih_out)
    # t = 0 has no a_{-1} to pass on to: only the weight gradients want its dz
    last = 0 if dz_out is not None or dz_ih_out is not None else 1
    for t in range(t_len - 1, last - 1, -1):
        h_prev = hp + (t - 1) * row if t > 0 else _ptr(h0)
        a_prev = ap + (t - 1) * row if t > 0 else None
        lib.gru_backward_step(
            vp + t * gate_row,
            np_ + t * row,
            h_prev,
            ap + t * row,
            a_prev,
            dzp + t * dz_row,
            None if ihp is None else ihp + t * gate_row,
            batch,
            n,
        )
        if t > 0:
            rec.accumulate(a_t[t - 1], dz_t[t])
    return a


def gate_saturation_counts(
    v: Tensor, tanh_gate: int, sig_bound: float, tanh_bound: float
) -> Tensor:
    """Per gate of post-activation gates v (T, B, G, H): how many entries are saturated, (G,)
    int64 (saturation.gate_saturation says when). Callers check `usable` and contiguity."""
    assert v.is_contiguous()
    t_len, batch, g, n = v.shape
    counts = torch.zeros(g, dtype=torch.int64)
    library().gate_saturation_counts(
        v.data_ptr(), t_len * batch, g, n, tanh_gate, sig_bound, tanh_bound, counts.data_ptr()
    )
    return counts
