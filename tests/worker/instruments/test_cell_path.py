"""The lstm cell path ||dL/dc_t|| and the forget-gate statistics, against an unrolled
reference written out here with retain_grad on every h_t and c_t."""

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from models import RecurrentNet
from tests.factories import make_spec
from worker.instruments.gates import ForgetGates
from worker.instruments.temporal import TemporalProfile, all_profiles, retain
from worker.train import train


def unrolled(net: RecurrentNet, x: Tensor, y: Tensor) -> tuple[list, list, list]:
    """Per layer: ||dL/dh_t||, ||dL/dc_t|| (T,) and the forget gates (T, B, H)."""
    inp, hs_all, cs_all, fs_all = x, [], [], []
    for layer in net.rnn:
        wi, wh, bi, bh = layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0
        h = c = x.new_zeros(x.shape[1], net.hidden_size)
        hs, cs, fs = [], [], []
        for t in range(x.shape[0]):
            i, f, g, o = (inp[t] @ wi.T + bi + h @ wh.T + bh).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            h.retain_grad()
            c.retain_grad()
            hs.append(h)
            cs.append(c)
            fs.append(torch.sigmoid(f).detach())
        hs_all.append(hs)
        cs_all.append(cs)
        fs_all.append(torch.stack(fs))
        inp = torch.stack(hs)
    F.mse_loss(net.head(inp[-1]), y).backward()

    def norms(vs: list[Tensor]) -> np.ndarray:
        return np.array([float(v.grad.norm()) for v in vs])

    return [norms(hs) for hs in hs_all], [norms(cs) for cs in cs_all], fs_all


def memory_cell(layers: int, dtype: torch.dtype, t_len: int = 100) -> tuple:
    torch.manual_seed(0)
    net = RecurrentNet(2, 1, cell="lstm", hidden_size=8, num_layers=layers).to(dtype)
    with torch.no_grad():
        for layer in net.rnn:
            n = layer.hidden_size
            layer.bias_hh_l0.zero_()
            layer.bias_ih_l0[:n] = -8.0  # input gate shut: nothing new is written
            layer.bias_ih_l0[n : 2 * n] = 8.0  # forget gate open: the cell keeps what it has
    x = torch.randn(t_len, 4, 2, dtype=dtype, generator=torch.Generator().manual_seed(1))
    y = torch.randn(4, 1, dtype=dtype, generator=torch.Generator().manual_seed(2))
    return net, x, y


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cell_profile_equals_unrolled_and_keeps_memory(layers: int, dtype: torch.dtype) -> None:
    net, x, y = memory_cell(layers, dtype)
    want_h, want_c, _ = unrolled(net, x, y)
    net.zero_grad()
    out = net(x)
    retain(out)
    F.mse_loss(net.head(out.top[-1]), y).backward()
    got_h, got_c = all_profiles(net.rnn, out)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for gh, gc, wh, wc in zip(got_h, got_c, want_h, want_c, strict=True):
        np.testing.assert_allclose(gh.numpy(), wh, rtol=tol)
        np.testing.assert_allclose(gc.numpy(), wc, rtol=tol)
    c, h = want_c[-1], want_h[-1]
    # sigmoid(8)^99 = 0.967: the cell path carries ~97% of dL/dc back to t = 0 ...
    assert 0.95 < c[0] / c[-1] < 0.99
    # ... while the h-profile drops by more than 100x in one step (the input gate is shut).
    assert h[-2] / h[-1] < 1e-2


def test_train_records_cell_profiles_and_forget_gate_statistics() -> None:
    spec = make_spec(
        model={"cell": "lstm", "hidden_size": 8, "num_layers": 2},
        train={"steps": 2, "dtype": "float64"},
    )
    result = train(spec, [TemporalProfile(), ForgetGates()])
    series = result.batch.series
    for layer in (0, 1):
        steps, cell = series[f"cell_temporal/{layer}"]
        assert steps == [0, 1] and cell.shape == (2, 12)
        for name in ("forget_mean", "forget_near_1", "forget_near_0"):
            assert series[f"gates/{layer}/{name}"][1].shape == (2, 1)
    window = result.summary["temporal_profile"]["window"]
    assert [w["step"] for w in window] == [0, 1]
    assert len(window[0]["cell_layers"]) == 2 and window[0]["cell_layers"][0]["seq_len"] == 12
    assert len(result.summary["gates"]["window"][-1]["layers"]) == 2


def test_forget_gate_statistics_match_the_unrolled_gates() -> None:
    net, x, y = memory_cell(2, torch.float64, t_len=30)
    with torch.no_grad():
        net.rnn[1].bias_ih_l0[8:16].uniform_(-6, 6)  # a spread of forget gates in layer 1
    _, _, fs = unrolled(net, x, y)

    class Ctx:
        step, finite = 0, True
        output = net(x)

    class FakeRun:
        model, instrumented = net, True

        class recorder:
            got: dict = {}

            @classmethod
            def record(cls, name: str, step: int, v: Tensor) -> None:
                cls.got[name] = float(v)

    ins = ForgetGates()
    ins.start(FakeRun)
    ins.after_backward(FakeRun, Ctx)
    for layer, f in enumerate(fs):
        got = FakeRun.recorder.got
        assert got[f"gates/{layer}/forget_mean"] == pytest.approx(float(f.mean()), rel=1e-12)
        assert got[f"gates/{layer}/forget_near_1"] == pytest.approx(
            float((f > 0.95).double().mean())
        )
        assert got[f"gates/{layer}/forget_near_0"] == pytest.approx(
            float((f < 0.05).double().mean())
        )
    assert 0 < FakeRun.recorder.got["gates/1/forget_near_0"] < 1


@pytest.mark.parametrize("memory", [False, True], ids=["random", "memory-cell"])
def test_float32_closed_form_is_as_accurate_as_float32_autograd(memory: bool) -> None:
    """Both float32 routes against the float64 profile, on entries down to 1e-6 of the
    profile's maximum: the closed form's largest relative error stays within twice that of
    float32 autograd through torch's own cell kernels (seen here: 4.6e-7 against 3.9e-7, and
    2.1e-6 against 2.0e-6 for the memory cell)."""
    from worker.instruments.temporal import profiles

    torch.manual_seed(0)
    net64 = RecurrentNet(2, 1, cell="lstm", hidden_size=16, num_layers=2).double()
    if memory:
        with torch.no_grad():
            for layer in net64.rnn:
                layer.bias_ih_l0[:16], layer.bias_ih_l0[16:32] = -8.0, 8.0
    net32 = RecurrentNet(2, 1, cell="lstm", hidden_size=16, num_layers=2)
    net32.load_state_dict({k: v.float() for k, v in net64.state_dict().items()})
    x = torch.randn(150, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randn(4, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def profile(net, dtype, method):
        out = net(x.to(dtype))
        retain(out)
        F.mse_loss(net.head(out.top[-1]), y.to(dtype)).backward()
        return [p.double().numpy() for p in profiles(net.rnn, out, method)]

    want = profile(net64, torch.float64, "unrolled")
    errors = {}
    for method in ("closed", "unrolled"):
        net32.zero_grad()
        got = profile(net32, torch.float32, method)
        errors[method] = max(
            float(np.max((np.abs(g - w) / w)[w >= 1e-6 * w.max()]))
            for g, w in zip(got, want, strict=True)
        )
    assert errors["closed"] <= 2 * errors["unrolled"] + 1e-7, errors
    assert errors["closed"] < 1e-5, errors
