"""The diagnosis: the pure function on synthetic profiles, then runs built to vanish, to
explode and to be healthy."""

import math

import pytest

from core import diagnosis as D
from core.diagnosis import diagnose, profile_evidence
from core.spec import ExperimentCreate
from worker.instruments import default_instruments
from worker.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def geometric(gamma: float, t_len: int, end: float = 0.5) -> list[float]:
    """p[t] = end * gamma^(T-1-t): what a linear RNN with W = gamma Q gives."""
    return [end * gamma ** (t_len - 1 - t) for t in range(t_len)]


def summary_with(profile: list[float] | None, **extra) -> dict:
    layers = None if profile is None else [profile_evidence(profile)]
    return {"temporal_profile": {"last": {"step": 90, "layers": layers}}, **extra}


RNN_SPEC = ExperimentCreate.model_validate({"model": {"cell": "rnn", "num_layers": 2}})


@pytest.mark.parametrize("gamma", [0.9, 1.0, 1.1])
def test_profile_evidence_of_a_geometric_profile(gamma: float) -> None:
    ev = profile_evidence(geometric(gamma, 100))
    assert ev["log_rate_per_step"] == pytest.approx(math.log(gamma), abs=1e-12)
    assert ev["ratio_first_last"] == pytest.approx(gamma**99, rel=1e-12)
    want = 99 if gamma >= 1 else math.floor(math.log(D.HORIZON_FRACTION) / math.log(gamma))
    assert ev["effective_horizon"] == want  # 65 for 0.9


def test_horizon_counts_steps_back_while_above_the_fraction() -> None:
    p = [1e-5, 1e-4, 2e-3, 0.5, 1.0]  # 1e-3 of 1.0: 2e-3 is in, 1e-4 is out
    assert profile_evidence(p)["effective_horizon"] == 2
    assert profile_evidence([0.0, 0.0])["ratio_first_last"] is None


@pytest.mark.parametrize(
    ("gamma", "verdict"),
    [(0.8, "vanishing"), (0.99, "healthy"), (1.0, "healthy"), (1.2, "exploding")],
)
def test_verdict_from_the_profile(gamma: float, verdict: str) -> None:
    d = diagnose(summary_with(geometric(gamma, 100)), RNN_SPEC.model_dump())
    assert d["verdict"] == verdict
    assert d["evidence"]["ratio_first_last"] == pytest.approx(gamma**99)


def test_thresholds_are_where_the_verdict_flips() -> None:
    t_len = 50
    for ratio, below, above in [
        (D.VANISHING_RATIO, "vanishing", "healthy"),
        (D.EXPLODING_RATIO, "healthy", "exploding"),
    ]:
        for factor, want in [(0.99, below), (1.01, above)]:
            g = (ratio * factor) ** (1 / (t_len - 1))
            assert diagnose(summary_with(geometric(g, t_len)))["verdict"] == want


def test_exploding_by_gradient_norm_alone_and_inconclusive_without_profile() -> None:
    big = D.EXPLODING_GRAD_NORM * 2
    assert diagnose(summary_with(None, max_grad_norm=big))["verdict"] == "exploding"
    assert diagnose(summary_with(None, max_grad_norm=1.0))["verdict"] == "inconclusive"
    assert diagnose(summary_with([0.0, 0.0, 0.0]))["verdict"] == "inconclusive"
    assert diagnose(summary_with([1.0, 1.0]))["verdict"] == "inconclusive"  # T < MIN_SEQ_LEN


def test_diverged_carries_the_nan_step_and_origin() -> None:
    first = {"step": 7, "origin": {"where": "activation", "layer": 0, "time_step": 41}}
    d = diagnose(
        summary_with(geometric(1.0, 10), nan_events=1, first_nonfinite=first),
        RNN_SPEC.model_dump(),
        "diverged",
    )
    assert d["verdict"] == "diverged"
    assert d["evidence"]["nan_step"] == 7 and d["evidence"]["nan_origin"]["time_step"] == 41
    names = [s["mitigation"] for s in d["suggestions"]]
    assert "clip_norm" not in names and "l2" in names  # the default spec clips already


def test_suggestions_fit_the_spec() -> None:
    vanish = diagnose(summary_with(geometric(0.5, 60)), RNN_SPEC.model_dump())
    names = [s["mitigation"] for s in vanish["suggestions"]]
    assert names[:2] == ["lstm_or_gru", "irnn"] and "residual" in names
    lstm = ExperimentCreate.model_validate({"model": {"cell": "lstm"}}).model_dump()
    names = [
        s["mitigation"] for s in diagnose(summary_with(geometric(0.5, 60)), lstm)["suggestions"]
    ]
    assert "lstm_or_gru" not in names and "irnn" not in names
    clipped = RNN_SPEC.model_dump()  # the default spec clips by norm already
    names = [
        s["mitigation"] for s in diagnose(summary_with(geometric(2, 60)), clipped)["suggestions"]
    ]
    assert "clip_norm" not in names and "l2" in names
    clipped["train"]["clip"]["mode"] = "none"
    names = [
        s["mitigation"] for s in diagnose(summary_with(geometric(2, 60)), clipped)["suggestions"]
    ]
    assert names[0] == "clip_norm"
    assert diagnose(summary_with(geometric(1, 60)))["suggestions"] == []


def test_spectrum_against_the_pascanu_bound() -> None:
    spec = ExperimentCreate.model_validate({"model": {"activation": "sigmoid"}}).model_dump()
    s = summary_with(geometric(0.5, 20), spectrum={"0": {"hh": {"sigma_max": 3.0, "radius": 2}}})
    ev = diagnose(s, spec)["evidence"]["spectrum"]
    assert ev["gamma"] == 0.25 and ev["bound"] == 4.0 and ev["vanishing_guaranteed"] is True


def run(spec: dict) -> tuple:
    s = ExperimentCreate.model_validate(spec)
    result = train(s, default_instruments(s))
    return result, diagnose(result.summary, s.model_dump(mode="json"), result.status)


def test_tanh_rnn_with_small_gain_vanishes() -> None:
    result, d = run(
        {
            "task": {"name": "adding", "seq_len": 100},
            "model": {
                "cell": "rnn",
                "activation": "tanh",
                "hidden_size": 32,
                "init": {"recurrent": "orthogonal", "gain": 0.5},
            },
            "train": {"steps": 20, "batch_size": 32, "device": "cpu"},
            "instrument": {"every": 5},
        }
    )
    assert result.status == "succeeded"
    assert d["verdict"] == "vanishing", d["evidence"]
    ev = d["evidence"]
    assert ev["ratio_first_last"] < 1e-20 and ev["effective_horizon"] < 15
    assert ev["log_rate_per_step"] < math.log(0.6)  # |f'| <= 1, sigma_max 0.5
    assert ev["spectrum"]["vanishing_guaranteed"] is True
    assert any(s["mitigation"] == "lstm_or_gru" for s in d["suggestions"])


def test_relu_rnn_with_gain_two_explodes_or_diverges_with_the_nan_located() -> None:
    result, d = run(
        {
            "task": {"name": "adding", "seq_len": 150},
            "model": {
                "cell": "rnn",
                "activation": "relu",
                "hidden_size": 32,
                "init": {"recurrent": "orthogonal", "gain": 2.0},
            },
            "train": {
                "steps": 20,
                "batch_size": 32,
                "device": "cpu",
                "clip": {"mode": "none"},
                "optimizer": {"name": "sgd", "lr": 1.0},
            },
            "instrument": {"every": 1},
        }
    )
    assert d["verdict"] == "diverged" and result.status == "diverged"
    ev = d["evidence"]
    assert ev["nan_step"] == result.summary["halted_at_step"]
    assert ev["nan_origin"]["where"] in ("activation", "output", "loss", "gradient", "grad_norm")
    (event,) = [e for e in result.batch.events if e["kind"] == "nonfinite"]
    assert event["detail"]["origin"] == ev["nan_origin"]
    assert d["suggestions"][0]["mitigation"] == "clip_norm"


def test_lstm_that_solves_adding_is_healthy() -> None:
    result, d = run(
        {
            "task": {"name": "adding", "seq_len": 20},
            "model": {"cell": "lstm", "hidden_size": 24},
            "train": {
                "steps": 250,
                "batch_size": 64,
                "device": "cpu",
                "optimizer": {"name": "adam", "lr": 0.02},
            },
            "instrument": {"every": 25, "val_every": 25},
        }
    )
    assert result.summary["solved_at_step"] is not None, result.summary["best_val_loss"]
    assert d["verdict"] == "healthy", d["evidence"]
    assert 1e-3 <= d["evidence"]["ratio_first_last"] <= 1e3
    assert d["suggestions"] == []
