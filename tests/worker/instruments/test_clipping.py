import numpy as np
import pytest

from tests.factories import make_spec
from worker.instruments.clipping import Clipping
from worker.instruments.grad_norms import GradNorms
from worker.train import train


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])
def test_clip_by_norm_leaves_min_of_norm_and_max_norm(max_norm: float) -> None:
    spec = make_spec(
        train={"steps": 4, "dtype": "float64", "clip": {"mode": "norm", "max_norm": max_norm}}
    )
    res = train(spec, [GradNorms(), Clipping()])
    steps, before = res.batch.series["grad_norm_total"]
    after_steps, after = res.batch.series["clip/after"]
    assert steps == after_steps == [0, 1, 2, 3]
    want = np.minimum(before[:, 0], max_norm)
    # torch scales by max_norm / (norm + 1e-6): within that eps of the exact minimum
    np.testing.assert_allclose(after[:, 0], want, rtol=2e-6 / min(max_norm, 1.0) + 1e-12)
    _, fired = res.batch.series["clip/fired"]
    assert list(fired[:, 0]) == [float(b > max_norm) for b in before[:, 0]]
    expect = float(np.mean(before[:, 0] > max_norm))
    assert res.summary["clip_fired_fraction"] == expect == res.summary["clip_fraction"]


def test_no_clipping_leaves_the_norm() -> None:
    spec = make_spec(train={"steps": 2, "clip": {"mode": "none"}})
    res = train(spec, [GradNorms(), Clipping()])
    np.testing.assert_allclose(
        res.batch.series["clip/after"][1], res.batch.series["grad_norm_total"][1], rtol=1e-6
    )
    assert res.summary["clip_fired_steps"] == 0
