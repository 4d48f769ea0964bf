"""Finite float32 gradients whose plain sum of squares overflows: the global norm is computed
scaled, reported true, clipping acts, and the step is a `norm_overflow`, not `nonfinite`."""

import math

import numpy as np
import pytest
import torch

from tests.worker.instruments.helpers import small_spec
from worker.instruments.base import Instrument
from worker.instruments.clipping import Clipping
from worker.instruments.grad_norms import GradNorms
from worker.instruments.nonfinite import FirstNonfinite
from worker.train import train


class Blow(Instrument):
    """Replaces the head's gradients with fixed values (hooks run inside backward, so the
    loop's norm sees them) and keeps what the loop's clipping started from."""

    def __init__(self, weight: float, bias: float) -> None:
        self.weight, self.bias = weight, bias
        self.true: list[float] = []

    def start(self, run) -> None:  # noqa: ANN001
        head = run.model.head
        head.weight.register_hook(lambda g: torch.full_like(g, self.weight))
        head.bias.register_hook(lambda g: torch.full_like(g, self.bias))

    def after_backward(self, run, ctx) -> None:  # noqa: ANN001
        sq = sum(float(p.grad.double().pow(2).sum()) for p in run.model.parameters())
        self.true.append(math.sqrt(sq))


@pytest.mark.parametrize(("weight", "bias"), [(2e34, 1e27), (1e27, 2e34), (3e38, 1.0)])
def test_overflowing_norm_of_finite_gradients_is_scaled_and_clipped(weight, bias) -> None:  # noqa: ANN001
    spec = small_spec(train={"steps": 3, "clip": {"mode": "norm", "max_norm": 1.0}})
    blow = Blow(weight, bias)
    res = train(spec, [GradNorms(), FirstNonfinite(), Clipping(), blow])
    kinds = [e["kind"] for e in res.batch.events]
    assert kinds == ["norm_overflow"] * 3 and res.summary["nan_events"] == 0
    assert res.summary["first_nonfinite"] is None
    assert res.summary["norm_overflow_events"] == 3
    # The reported global norm is the true one, in float64 even above float32's maximum
    # (the (3e38, 1) case: 8.5e38 > 3.4e38).
    _, total = res.batch.series["grad_norm_total"]
    np.testing.assert_allclose(total[:, 0], blow.true, rtol=1e-6)
    assert res.summary["max_grad_norm"] == pytest.approx(max(blow.true), rel=1e-6)
    assert res.summary["grad_norm_median"] == pytest.approx(sorted(blow.true)[1], rel=1e-6)
    _, per_head = res.batch.series["grad/head.weight"]
    np.testing.assert_allclose(per_head[:, 0], weight * math.sqrt(8), rtol=1e-6)
    # Clipping acted on every step: the gradients left have norm max_norm.
    _, after = res.batch.series["clip/after"]
    np.testing.assert_allclose(after[:, 0], 1.0, rtol=1e-4)
    assert res.summary["clip_fired_steps"] == 3


def test_a_real_nonfinite_gradient_stays_nonfinite() -> None:
    spec = small_spec(train={"steps": 2, "clip": {"mode": "norm", "max_norm": 1.0}})
    res = train(spec, [GradNorms(), FirstNonfinite(), Blow(math.inf, 1.0)])
    kinds = {e["kind"] for e in res.batch.events}
    assert "nonfinite" in kinds and "norm_overflow" not in kinds
    assert res.summary["norm_overflow_events"] == 0
    assert res.summary["first_nonfinite"]["origin"]["where"] == "gradient"


def test_no_overflow_keeps_the_plain_norm() -> None:
    res = train(small_spec(train={"steps": 5}), [GradNorms()])
    _, total = res.batch.series["grad_norm_total"]
    assert res.summary["norm_overflow_events"] == 0 and not res.batch.events
    assert res.summary["grad_norm_median"] == pytest.approx(float(np.median(total[:, 0])))
