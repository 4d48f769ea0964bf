import math

import pytest
import torch
from torch import nn

from gradlab.instruments.spectrum import block_spectrum
from models import RecurrentNet, init_recurrent_net
from tests.factories import make_spec
from worker.instruments.base import Instrument
from worker.instruments.spectrum import Spectrum
from worker.train import train


@pytest.mark.parametrize("gain", [0.5, 1.0, 1.7])
def test_orthogonal_block_has_sigma_and_radius_equal_to_gain(gain: float) -> None:
    torch.manual_seed(0)
    w = torch.empty(32, 32, dtype=torch.float64)
    nn.init.orthogonal_(w, gain=gain)
    (sigma, radius) = block_spectrum(w)["hh"]
    assert float(sigma) == pytest.approx(gain, rel=1e-12)
    assert float(radius) == pytest.approx(gain, rel=1e-10)  # every eigenvalue on |z| = gain


def test_gate_blocks_match_torch_linalg_on_each_block() -> None:
    torch.manual_seed(1)
    net = RecurrentNet(2, 1, cell="lstm", hidden_size=16).double()
    init_recurrent_net(net, "normal", "xavier_uniform", 1.0)
    w = net.rnn[0].weight_hh_l0.detach()
    got = block_spectrum(w)
    assert list(got) == ["i", "f", "g", "o"]
    for k, name in enumerate("ifgo"):
        block = w[16 * k : 16 * (k + 1)]
        sigma, radius = got[name]
        assert float(sigma) == pytest.approx(float(torch.linalg.matrix_norm(block, ord=2)))
        want_radius = float(torch.linalg.eigvals(block).abs().max())
        assert float(radius) == pytest.approx(want_radius, rel=1e-10)
        assert float(radius) <= float(sigma) + 1e-12


def test_recorded_per_layer_and_block_during_training() -> None:
    spec = make_spec(
        model={"cell": "gru", "num_layers": 2, "init": {"recurrent": "orthogonal", "gain": 0.8}},
        train={"steps": 2, "optimizer": {"name": "sgd", "lr": 1e-9}},
    )
    res = train(spec, [Spectrum()])
    for layer in ("0", "1"):
        for block in "rzn":
            steps, v = res.batch.series[f"spectrum/{layer}/{block}/sigma_max"]
            assert steps == [0, 1]
            assert v[0, 0] == pytest.approx(0.8, rel=1e-5)  # step 0 sees the initial matrix
    assert res.summary["spectrum"]["1"]["z"]["radius"] == pytest.approx(0.8, rel=1e-4)


def test_sigma_at_every_instrumented_step_radius_on_the_dynamics_steps_and_the_last() -> None:
    spec = make_spec(
        model={"cell": "rnn", "activation": "tanh"},
        train={"steps": 23},
        instrument={"every": 2, "dynamics_every": 3, "on": ["spectrum"]},
    )
    weights = {}

    class Probe(Instrument):  # W_hh as the spectrum saw it, after the backward of each step
        def after_backward(self, run, ctx) -> None:
            weights[ctx.step] = run.model.rnn[0].weight_hh_l0.detach().clone()

    res = train(spec, [Spectrum(), Probe()])
    sigma_steps, _ = res.batch.series["spectrum/0/hh/sigma_max"]
    radius_steps, radius = res.batch.series["spectrum/0/hh/radius"]
    assert sigma_steps == list(range(0, 23, 2))
    assert radius_steps == [0, 6, 12, 18, 22]  # the 1st, 4th, 7th, 10th instrumented and last
    final = float(torch.linalg.eigvals(weights[22].double()).abs().max())
    assert float(radius[-1, 0]) == pytest.approx(final, rel=1e-5)
    assert res.summary["spectrum"]["0"]["hh"]["radius"] == pytest.approx(final, rel=1e-5)
    step = res.summary["spectrum"]["0"]["hh"]["radius_step"]
    assert step == 22 and isinstance(step, int)


def test_instrument_toggles_in_the_spec() -> None:
    from worker.instruments import default_instruments

    names = [i.name for i in default_instruments(make_spec())]
    assert names == [
        "loss",
        "grad_norms",
        "nonfinite",
        "temporal",
        "spectrum",
        "saturation",
        "update_ratio",
        "clipping",
        "gates",
        "credit",
        "lyapunov",
        "reach",
    ]
    only = default_instruments(make_spec(instrument={"on": ["spectrum"]}))
    assert [i.name for i in only] == ["loss", "grad_norms", "nonfinite", "spectrum"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["gaussian", "low_rank", "rotation"])
def test_sigma_from_the_gram_matrix_and_radius_against_svd_and_eig(dtype, kind) -> None:
    """sigma_max from the Gram matrix's eigvalsh against svdvals (1e-5 float32, 1e-12 float64);
    the radius against eigvals, also where the largest eigenvalues are a complex pair."""
    torch.manual_seed(2)
    n = 24
    if kind == "gaussian":
        w = torch.randn(4 * n, n, dtype=torch.float64) / n**0.5
    elif kind == "low_rank":  # one large singular value, the rest tiny
        w = torch.randn(4 * n, 1, dtype=torch.float64) @ torch.randn(1, n, dtype=torch.float64)
        w += 1e-3 * torch.randn(4 * n, n, dtype=torch.float64)
    else:  # a rotation by 0.7 rad scaled by 1.3 on top of 0.5 I: radius 1.3, a complex pair
        q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))[0]
        core = 0.5 * torch.eye(n, dtype=torch.float64)
        c, s = 1.3 * math.cos(0.7), 1.3 * math.sin(0.7)
        core[:2, :2] = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
        w = torch.cat([q @ core @ q.T] * 4)
    w = w.to(dtype)
    got = block_spectrum(w)
    rel = 1e-5 if dtype == torch.float32 else 1e-12
    for k, name in enumerate("ifgo"):
        block = w[n * k : n * (k + 1)].double()
        sigma, radius = got[name]
        assert float(sigma) == pytest.approx(float(torch.linalg.svdvals(block)[0]), rel=rel)
        exact = torch.linalg.eigvals(block).abs().max()
        # float32 eig of a non-normal block: rounding of the eigenvalues themselves
        assert float(radius) == pytest.approx(float(exact), rel=10 * rel)
        if kind == "rotation":
            assert float(radius) == pytest.approx(1.3, rel=10 * rel)


@pytest.mark.parametrize("magnitude", [1e-30, 1e25, 1e36])
def test_sigma_of_finite_blocks_whose_squares_overflow_or_underflow(magnitude: float) -> None:
    """A diverging float32 run's W_hh (entries 1e25: their squares overflow float32) and a
    vanishing one: sigma_max still equals svdvals; an all-zero block is 0."""
    torch.manual_seed(3)
    w = torch.randn(16, 16, dtype=torch.float64)
    got, _ = block_spectrum((w * magnitude).float())["hh"]
    want = torch.linalg.svdvals(w)[0] * magnitude
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    assert float(block_spectrum(torch.zeros(16, 16))["hh"][0]) == 0.0
