import pytest

from tests.factories import make_spec
from tests.worker.instruments.helpers import Probe
from worker.instruments.base import Instrument
from worker.instruments.update_ratio import UpdateRatio
from worker.train import train


def test_sgd_update_is_lr_times_gradient() -> None:
    lr = 0.05
    spec = make_spec(
        train={
            "steps": 3,
            "dtype": "float64",
            "optimizer": {"name": "sgd", "lr": lr},
            "clip": {"mode": "none"},
        },
        instrument={"every": 2},  # steps 0 and 2 (the last) are instrumented, 1 is not
    )
    probe = Probe()
    res = train(spec, [probe, UpdateRatio()])
    w_name = "rnn.0.weight_hh_l0"
    steps, ratio = res.batch.series[f"update_ratio/{w_name}"]
    assert steps == [0, 2]
    _, wnorm = res.batch.series[f"weight_norm/{w_name}"]
    for i, step in enumerate(steps):
        w, g = probe.seen[step][w_name]
        assert ratio[i, 0] == pytest.approx(float(lr * g.norm() / w.norm()), rel=1e-12)
        assert wnorm[i, 0] == pytest.approx(float((w - lr * g).norm()), rel=1e-12)
    assert res.summary["update_ratio"][w_name] == pytest.approx(ratio[-1, 0])


class MarkSkipped(Instrument):
    """Marks every step skipped, as the loop does for a non-finite one."""

    def after_step(self, run, ctx) -> None:
        ctx.skipped = True


def test_no_ratio_on_a_skipped_step() -> None:
    res = train(make_spec(train={"steps": 2}), [MarkSkipped(), UpdateRatio()])
    assert not any(k.startswith("update_ratio/") for k in res.batch.series)
    assert res.summary["update_ratio"] == {}
