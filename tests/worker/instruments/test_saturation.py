import contextlib

import pytest
import torch
from torch import nn

from gradlab.instruments import native
from gradlab.instruments.saturation import dead_relu, gate_saturation, layer_saturation
from models.cells import ElmanLayer
from tests.factories import make_spec
from worker.instruments.saturation import Saturation
from worker.train import train


def test_tanh_and_sigmoid_fractions_on_hand_built_states() -> None:
    h = torch.tensor([0.995, -0.999, 0.5, 0.0, 0.98, -0.2, 0.991, 0.1]).view(2, 2, 2)
    tanh_layer = nn.RNN(2, 2)
    assert float(layer_saturation(tanh_layer, torch.zeros(2, 2, 2), h)["tanh"]) == 3 / 8
    s = torch.tensor([0.005, 0.5, 0.995, 0.98, 0.02, 0.9999]).view(3, 1, 2)
    sig = ElmanLayer(2, 2, "sigmoid")
    assert float(layer_saturation(sig, torch.zeros(3, 1, 2), s)["sigmoid"]) == 3 / 6
    assert layer_saturation(ElmanLayer(2, 2, "elu"), torch.zeros(3, 1, 2), s) == {}


def test_dead_relu_needs_zero_for_every_example_and_step() -> None:
    h = torch.zeros(4, 3, 5)  # (T, B, H)
    h[2, 1, 0] = 0.3  # unit 0 fires once: alive
    h[:, :, 1] = 1.0  # unit 1 always on
    # units 2, 3, 4 never fire: dead
    assert float(dead_relu(h)) == 3 / 5
    relu = nn.RNN(2, 5, nonlinearity="relu")
    assert float(layer_saturation(relu, torch.zeros(4, 3, 2), h)["dead_relu"]) == 3 / 5


def test_lstm_gates_forced_saturated_by_their_biases() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4).double()
    with torch.no_grad():
        lstm.weight_ih_l0.mul_(0.01)
        lstm.weight_hh_l0.mul_(0.01)
        lstm.bias_hh_l0.zero_()
        lstm.bias_ih_l0.zero_()
        lstm.bias_ih_l0[0:4] = 20.0  # input gate: sigmoid(20) > 0.99
        lstm.bias_ih_l0[8:12] = -20.0  # cell candidate: tanh(-20) < -0.99
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h, _ = lstm(x)
    got = {k: float(v) for k, v in layer_saturation(lstm, x, h).items()}
    assert got == {"i": 1.0, "f": 0.0, "g": 1.0, "o": 0.0}


@pytest.mark.parametrize(
    "route",
    [
        ("torch", None),  # torch's ops over the whole tensor
        ("torch", 5 * 4 * 33 * 2),  # 2 steps at a time
        ("kernel", None),  # the C pass (gradlab/instruments/native.py)
    ],
    ids=["torch-whole", "torch-chunks", "kernel"],
)
def test_gate_fractions_equal_a_count_per_gate(route, monkeypatch) -> None:
    """Random gates with every gate's fraction different: each counted over its own slot, a
    NaN nowhere."""
    kind, chunk = route
    if chunk is not None:
        monkeypatch.setattr("gradlab.instruments.saturation.CHUNK_ELEMENTS", chunk)
    if kind == "kernel" and not native.usable(torch.zeros(1)):
        pytest.skip("no C compiler here")
    gen = torch.Generator().manual_seed(2)
    v = torch.rand(7, 5, 4, 33, generator=gen)  # (T, B, G, H)
    for k, spread in enumerate((1.0, 1.5, 3.0, 1.2)):  # a different fraction in each
        v[:, :, k] = (v[:, :, k] - 0.5) * spread + 0.5
    v[:, :, 2] = v[:, :, 2] * 2 - 1  # the tanh slot in [-1, 1] and beyond
    v[3, 1, :, 4] = float("nan")
    with contextlib.nullcontext() if kind == "kernel" else native.off():
        got = gate_saturation(("i", "f", "g", "o"), v)
    for k, name in enumerate("ifgo"):
        c = v[:, :, k]
        want = (c.abs() > 0.99) if k == 2 else ((c - 0.5).abs() > 0.49)
        assert float(got[name]) == want.double().mean().item(), name
    assert len({float(f) for f in got.values()}) == 4


def test_recorded_during_training() -> None:
    spec = make_spec(model={"cell": "rnn", "activation": "relu", "num_layers": 2})
    res = train(spec, [Saturation()])
    steps, v = res.batch.series["saturation/1/dead_relu"]
    assert steps == [0, 1, 2] and ((v >= 0) & (v <= 1)).all()
    assert set(res.summary["saturation"]) == {"0", "1"}
    assert res.summary["saturation"]["1"]["dead_relu"] == pytest.approx(v[-1, 0])
