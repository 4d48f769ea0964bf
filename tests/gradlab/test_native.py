"""The C gate kernels (gradlab/instruments/native.py, native/gates.c): each time step equal to
torch's own ops on the same pre-activations, NaN passed through where it entered and nowhere
else, infinities saturated, and a machine without a compiler left on torch's ops."""

import pytest
import torch

from gradlab.instruments import native

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler here")

B, H = 3, 5


def _lstm_reference(pre: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, ...]:
    i, f, g, o = pre.double().unbind(1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c_prev.double() + i * g
    return torch.stack([i, f, g, o], 1), c, c.tanh(), o * c.tanh()


def _forward_step(pre: torch.Tensor, c_prev: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    gates = pre.clone()
    c, tc, h = (torch.empty(B, H) for _ in range(3))
    native.library().lstm_forward_step(
        gates.data_ptr(),
        None if c_prev is None else c_prev.data_ptr(),
        c.data_ptr(),
        tc.data_ptr(),
        h.data_ptr(),
        B,
        H,
    )
    return gates, c, tc, h


def test_an_lstm_step_equals_torchs_ops_over_a_wide_range() -> None:
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(B, 4, H, generator=gen) * 30  # deep into saturation both ways
    pre[0, :, 0] = torch.tensor([0.0, 1e-6, -1e-6, 100.0])
    c_prev = torch.randn(B, H, generator=gen)
    got = _forward_step(pre, c_prev)
    for g, w in zip(got, _lstm_reference(pre, c_prev), strict=True):
        torch.testing.assert_close(g.double(), w, rtol=3e-6, atol=3e-7)
    # no c_prev: a zero initial cell
    zero = _forward_step(pre, None)
    for g, w in zip(zero, _lstm_reference(pre, torch.zeros(B, H)), strict=True):
        torch.testing.assert_close(g.double(), w, rtol=3e-6, atol=3e-7)


def test_nan_stays_where_it_entered_and_infinities_saturate() -> None:
    pre = torch.zeros(B, 4, H)
    pre[1, 2, 3] = float("nan")  # example 1, the g gate of unit 3
    pre[2, 0, :] = float("inf")  # example 2: i fully open
    pre[2, 3, :] = -float("inf")  # and o shut
    gates, c, _, h = _forward_step(pre, torch.zeros(B, H))
    assert torch.isnan(c[1, 3]) and torch.isnan(h[1, 3])
    nan = torch.isnan(h)
    assert nan.sum() == 1  # nowhere else
    assert torch.all(gates[2, 0] == 1) and torch.all(gates[2, 3] == 0)
    assert torch.all(h[2] == 0) and torch.isfinite(c[2]).all()


def test_the_backward_step_of_a_gru_equals_autograd() -> None:
    """One gru step's kernel against autograd on torch's formulas, float64."""
    gen = torch.Generator().manual_seed(1)
    x_side = torch.randn(B, 3, H, generator=gen, dtype=torch.float64)
    hh = torch.randn(B, 3, H, generator=gen, dtype=torch.float64).requires_grad_()
    xs = x_side.clone().requires_grad_()
    h_prev = torch.randn(B, H, generator=gen, dtype=torch.float64)
    r = (xs[:, 0] + hh[:, 0]).sigmoid()
    z = (xs[:, 1] + hh[:, 1]).sigmoid()
    u = (xs[:, 2] + r * hh[:, 2]).tanh()
    h = (1 - z) * u + z * h_prev
    a = torch.randn(B, H, generator=gen, dtype=torch.float64)
    h.backward(a)
    gates = torch.stack([r, z, u], 1).detach().float().contiguous()
    dz_hh, dz_ih = torch.empty(B, 3, H), torch.empty(B, 3, H)
    a_prev = torch.zeros(B, H)
    hh_n, hp, af = (t.detach().float().contiguous() for t in (hh[:, 2], h_prev, a))
    native.library().gru_backward_step(
        gates.data_ptr(),
        hh_n.data_ptr(),
        hp.data_ptr(),
        af.data_ptr(),
        a_prev.data_ptr(),
        dz_hh.data_ptr(),
        dz_ih.data_ptr(),
        B,
        H,
    )
    torch.testing.assert_close(dz_hh.double(), hh.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dz_ih.double(), xs.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a_prev.double(), a * z.detach(), rtol=1e-5, atol=1e-6)


def test_without_a_compiler_or_turned_off_torchs_ops_stay(monkeypatch, tmp_path) -> None:
    x = torch.zeros(2)
    assert native.usable(x)
    with native.off():
        assert not native.usable(x)
    assert not native.usable(x.double())
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built there yet
        monkeypatch.setenv("CC", "/bin/false")
        native.library.cache_clear()
        assert native.library() is None and not native.usable(x)
        monkeypatch.delenv("CC")
        monkeypatch.setenv("GRADLAB_NATIVE", "0")
        native.library.cache_clear()
        assert native.library() is None
        monkeypatch.delenv("GRADLAB_NATIVE")
        native.library.cache_clear()
        assert native.library() is not None  # built afresh in the new cache
        assert list((tmp_path / "gradlab" / "native").glob("gates-*.so"))
    finally:
        monkeypatch.undo()
        native.library.cache_clear()
