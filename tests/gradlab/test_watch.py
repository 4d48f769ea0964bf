"""gradlab.watch on a user's own loop: what it sends equals an exact reference. The temporal
profile against an unrolled retain_grad computation on the same weights and batch, for every
cell, 1-3 layers, batch_first on and off, with and without an initial state; the gradient
norms before the loop's clipping, the spectrum, update ratios, the logged loss and the first
non-finite origin against direct computations. The service here is a stand-in on an httpx
mock transport (tests/gradlab/wire.py); tests/gradlab/test_watch_service.py runs the real one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradlab
from tests.gradlab.wire import FakeService

T, B, I, H = 12, 3, 4, 5  # noqa: E741


def make_module(cell: str, layers: int, batch_first: bool, dtype: torch.dtype) -> nn.RNNBase:
    torch.manual_seed(layers * 10 + batch_first)
    kw = {"num_layers": layers, "batch_first": batch_first}
    if cell == "lstm":
        m = nn.LSTM(I, H, **kw)
    elif cell == "gru":
        m = nn.GRU(I, H, **kw)
    else:
        m = nn.RNN(I, H, nonlinearity=cell.split("_")[1], **kw)
    with torch.no_grad():
        for p in m.parameters():  # large enough weights that the profile changes over time
            p.uniform_(-0.8, 0.8)
    return m.to(dtype)


class Net(nn.Module):
    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn


def reference(m: nn.RNNBase, x_tm, h0, c0, r_out, r_hn, r_cn):
    """Per layer ||dL/dh_t|| (and ||dL/dc_t||) by unrolling the layers with torch's cells
    and retain_grad on every state: the total derivative, every path included."""
    lstm, gru = isinstance(m, nn.LSTM), isinstance(m, nn.GRU)
    layer_in = list(x_tm.unbind(0))
    hs_all, cs_all, h_last, c_last = [], [], [], []
    for k in range(m.num_layers):
        w = [getattr(m, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h, c = h0[k], c0[k] if c0 is not None else None
        hs, cs = [], []
        for t in range(len(layer_in)):
            if lstm:
                h, c = torch._VF.lstm_cell(layer_in[t], (h, c), *w)
                c.retain_grad()
                cs.append(c)
            elif gru:
                h = torch._VF.gru_cell(layer_in[t], h, *w)
            elif m.nonlinearity == "tanh":
                h = torch._VF.rnn_tanh_cell(layer_in[t], h, *w)
            else:
                h = torch._VF.rnn_relu_cell(layer_in[t], h, *w)
            h.retain_grad()
            hs.append(h)
        layer_in = hs
        hs_all.append(hs)
        cs_all.append(cs)
        h_last.append(h)
        c_last.append(c)
    loss = (torch.stack(hs_all[-1]) * r_out).sum() + (torch.stack(h_last) * r_hn).sum()
    if lstm:
        loss = loss + (torch.stack(c_last) * r_cn).sum()
    loss.backward()
    prof = [torch.stack([h.grad.norm() for h in hs]) for hs in hs_all]
    cells = [torch.stack([c.grad.norm() for c in cs]) for cs in cs_all] if lstm else None
    return prof, cells


def assert_close(got: np.ndarray, want: torch.Tensor, dtype: torch.dtype) -> None:
    want_np = want.detach().double().numpy()
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    err = np.abs(got - want_np).max() / np.abs(want_np).max()
    assert err < tol, (err, got, want_np)
    assert np.ptp(want_np) > 1e-3 * want_np.max()  # a profile that moves over time


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_the_profile_sent_equals_an_unrolled_retain_grad_reference(
    cell, layers, batch_first, dtype, one_torch_thread
) -> None:
    m = make_module(cell, layers, batch_first, dtype)
    lstm = cell == "lstm"
    g = torch.Generator().manual_seed(7)
    x_tm = torch.randn(T, B, I, generator=g, dtype=torch.float64).to(dtype)
    with_state = (layers + batch_first) % 2 == 0
    h0 = (
        torch.randn(layers, B, H, generator=g, dtype=torch.float64).to(dtype)
        if with_state
        else torch.zeros(layers, B, H, dtype=dtype)
    )
    c0 = torch.randn(layers, B, H, generator=g, dtype=torch.float64).to(dtype) if lstm else None
    if lstm and not with_state:
        c0 = torch.zeros_like(c0)
    r_out = torch.randn(T, B, H, generator=g, dtype=torch.float64).to(dtype)
    r_hn = torch.randn(layers, B, H, generator=g, dtype=torch.float64).to(dtype)
    r_cn = torch.randn(layers, B, H, generator=g, dtype=torch.float64).to(dtype)
    want, want_cells = reference(m, x_tm, h0, c0, r_out, r_hn, r_cn)
    m.zero_grad()

    service = FakeService()
    net = Net(m)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    run = gradlab.watch(net, every=1, http=service.client())
    x = x_tm.transpose(0, 1) if batch_first else x_tm
    hx = (h0, c0) if lstm else h0
    args = (x, hx) if with_state else (x,)
    out, state = m(*args)
    h_n, c_n = state if lstm else (state, None)
    out_tm = out.transpose(0, 1) if batch_first else out
    loss = (out_tm * r_out).sum() + (h_n * r_hn).sum()
    if lstm:
        loss = loss + (c_n * r_cn).sum()
    loss.backward()
    opt.step()
    run.log(loss=loss)
    run.finish()

    for k in range(layers):
        steps, got = service.series(f"temporal/{k}")
        assert steps == [0] and got.shape == (1, T)
        assert_close(got[0], want[k], dtype)
        if lstm:
            _, got_c = service.series(f"cell_temporal/{k}")
            assert_close(got_c[0], want_cells[k], dtype)
    assert service.series(f"temporal/{layers}")[0] == []


def test_gradient_norms_are_read_before_the_loops_clipping(one_torch_thread) -> None:
    torch.manual_seed(0)
    net = nn.Sequential()
    net.rnn = nn.GRU(I, H, num_layers=2)
    head = nn.Linear(H, 1)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    service = FakeService()
    run = gradlab.watch(net, every=2, http=service.client())
    raw_norms, before, after = [], [], []
    for _ in range(4):
        x = torch.randn(T, B, I)
        out, _ = net.rnn(x)
        loss = (head(out) ** 2).mean() * 100  # a large gradient, clipped below
        opt.zero_grad()
        loss.backward()
        raw_norms.append({n: float(p.grad.norm()) for n, p in net.named_parameters()})
        torch.nn.utils.clip_grad_norm_(params, 0.01)
        before.append([p.detach().clone() for p in net.parameters()])
        opt.step()
        after.append([p.detach().clone() for p in net.parameters()])
        run.log(loss=loss)
    run.finish()
    for name in raw_norms[0]:
        steps, got = service.series(f"grad/{name}")
        assert steps == [0, 2]
        assert got[:, 0] == pytest.approx([raw_norms[0][name], raw_norms[2][name]], rel=1e-6)
    steps, total = service.series("grad_norm_total")
    want_total = math.sqrt(sum(v * v for v in raw_norms[2].values()))
    assert steps == [0, 2] and total[1, 0] == pytest.approx(want_total, rel=1e-6)
    names = [n for n, _ in net.named_parameters()]
    for i, name in enumerate(names):
        steps, ratio = service.series(f"update_ratio/{name}")
        want = [float((after[s][i] - before[s][i]).norm() / before[s][i].norm()) for s in (0, 2)]
        assert steps == [0, 2] and ratio[:, 0] == pytest.approx(want, rel=1e-5)
    for k in range(2):
        w = getattr(net.rnn, f"weight_hh_l{k}").detach().reshape(3, H, H)
        steps, sigma = service.series(f"spectrum/{k}/z/sigma_max")
        # at step 2, before its update: the weights after step 1's
        assert steps == [0, 2]
        w_at_2 = before[2][names.index(f"rnn.weight_hh_l{k}")].reshape(3, H, H)
        assert sigma[1, 0] == pytest.approx(float(torch.linalg.svdvals(w_at_2[1])[0]), rel=1e-6)
        assert float(torch.linalg.svdvals(w[1])[0]) > 0
        _, sat = service.series(f"saturation/{k}/z")
        assert sat.shape == (2, 1) and 0 <= sat.min() <= sat.max() <= 1
    steps, losses = service.series("loss")
    assert steps == [0, 1, 2, 3]
    summary = service.finish["summary"]
    assert summary["steps"] == 4 and summary["nan_events"] == 0
    assert summary["max_grad_norm"] == pytest.approx(
        max(math.sqrt(sum(v * v for v in r.values())) for r in raw_norms), rel=1e-6
    )
    assert len(summary["temporal_profile"]["last"]["layers"]) == 2
    assert summary["temporal_profile"]["last"]["step"] == 2
    assert service.create["layers"][1] == {
        "layer": 1,
        "module": "rnn",
        "index": 1,
        "cell": "gru",
        "activation": None,
        "input_size": H,
        "hidden_size": H,
        "batch_first": False,
    }


def test_a_nonfinite_gradient_is_an_event_with_its_origin(one_torch_thread) -> None:
    torch.manual_seed(0)
    net = Net(nn.RNN(I, H))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    service = FakeService()
    run = gradlab.watch(net, every=10, http=service.client())
    for step in range(3):
        x = torch.randn(T, B, I)
        if step == 1:
            x[4, 0, 0] = math.nan  # the input at t=4: the layer's output there is the first NaN
        out, _ = net.rnn(x)
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        if step == 1:
            for p in net.parameters():
                p.grad = torch.nan_to_num(p.grad, nan=0.0)  # the loop skips the bad update
            net.rnn.weight_hh_l0.grad[0, 0] = math.nan
        opt.step() if step != 1 else run.step()
        run.log(loss=loss)
    run.finish()
    events = [e for b in service.batches.values() for e in b["events"]]
    assert [e["step"] for e in events] == [1]  # one event for the step, not one per check
    origin = events[0]["detail"]["origin"]
    assert origin["where"] == "activation" and origin["module"] == "rnn"
    assert origin["time_step"] == 4
    assert service.finish["status"] == "diverged"
    assert service.finish["summary"]["first_nonfinite"]["step"] == 1


def test_packed_sequences_and_bidirectional_modules_get_the_rest(one_torch_thread, caplog) -> None:
    torch.manual_seed(0)
    net = nn.Module()
    net.enc = nn.LSTM(I, H, bidirectional=True)
    net.dec = nn.GRU(I, H)
    opt = torch.optim.Adam(net.parameters())
    service = FakeService()
    run = gradlab.watch(net, every=1, http=service.client())
    x = torch.randn(T, B, I)
    packed = nn.utils.rnn.pack_padded_sequence(x, [T, T - 2, 3], enforce_sorted=True)
    out_enc, _ = net.enc(x)
    out_dec, _ = net.dec(packed)
    loss = out_enc.sum() + nn.utils.rnn.pad_packed_sequence(out_dec)[0].pow(2).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    run.finish()
    names = service.names()
    assert not any(n.startswith(("temporal/", "saturation/")) for n in names)
    assert {
        "grad/dec.weight_hh_l0",
        "spectrum/1/r/sigma_max",
        "update_ratio/enc.weight_ih_l0",
    } <= names
    said = caplog.text
    assert "bidirectional" in said and "packed sequence" in said


def test_an_instrument_that_raises_is_turned_off_and_training_goes_on(
    one_torch_thread, monkeypatch, caplog
) -> None:
    from gradlab import watcher

    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(watcher, "block_spectrum", broken)
    torch.manual_seed(0)
    net = Net(nn.LSTM(I, H))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    service = FakeService()
    run = gradlab.watch(net, every=1, http=service.client())
    for _ in range(3):
        out, _ = net.rnn(torch.randn(T, B, I))
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    run.finish()
    assert caplog.text.count("the spectrum instrument failed") == 1
    assert service.finish["summary"]["instruments_off"] == ["spectrum"]
    assert service.series("temporal/0")[0] == [0, 1, 2]  # the others carry on
    assert not any(n.startswith("spectrum/") for n in service.names())
