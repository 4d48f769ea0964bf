"""The audit's classes on real short runs: weights set before step 0 by an instrument's
start() (the test hook), then train() and the diagnosis as the service runs them."""

import math

import pytest
import torch

from core.diagnosis import diagnose
from core.spec import ExperimentCreate
from worker.instruments import default_instruments
from worker.instruments.base import Instrument, Run, StepContext
from worker.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class SetWeights(Instrument):
    """Before step 0: call `setter(model)` under no_grad."""

    def __init__(self, setter) -> None:
        self.setter = setter

    def start(self, run: Run) -> None:
        with torch.no_grad():
            self.setter(run.model)


class BlowUpAt(Instrument):
    """After the optimiser step `step`: scale every recurrent matrix by `factor` (a late
    divergence made to order, after the run has learned)."""

    def __init__(self, step: int, factor: float) -> None:
        self.step, self.factor = step, factor

    def after_step(self, run: Run, ctx: StepContext) -> None:
        if ctx.step == self.step:
            with torch.no_grad():
                for w in run.model.recurrent_weights().values():
                    w.mul_(self.factor)


def run(spec: dict, *hooks: Instrument) -> tuple:
    s = ExperimentCreate.model_validate(spec)
    result = train(s, [*hooks, *default_instruments(s)])
    return result, diagnose(result.summary, s.model_dump(mode="json"), result.status)


FROZEN = {"optimizer": {"name": "sgd", "lr": 1e-12}, "batch_size": 8, "device": "cpu"}


def linear(t_len: int, hidden: int = 8, steps: int = 5) -> dict:
    return {
        "task": {"seq_len": t_len},
        "model": {"cell": "rnn", "activation": "linear", "hidden_size": hidden},
        "train": {"steps": steps, **FROZEN, "dtype": "float64"},
        "instrument": {"every": 1},
    }


@pytest.mark.parametrize("t_len", [25, 50])
def test_class3_linear_rnn_with_w_08q_is_vanishing_at_every_length(t_len: int) -> None:
    def w_08q(model) -> None:
        q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
        model.rnn[0].weight_hh_l0.copy_(0.8 * q)

    result, d = run(linear(t_len), SetWeights(w_08q))
    assert len(result.summary["temporal_profile"]["window"]) == 5
    h = d["layers"][0]["states"]["h"]
    assert h["log_rate_per_step"] == pytest.approx(math.log(0.8), abs=1e-6)  # -0.223
    assert d["verdict"] == "vanishing" and d["evidence"]["spectrum"]["vanishing_guaranteed"]


@pytest.mark.parametrize("t_len", [50, 51])
def test_class4_a_period_two_w_is_not_judged_by_parity(t_len: int) -> None:
    a = 1e-4

    def period_two(model) -> None:
        w = torch.zeros(8, 8, dtype=torch.float64)
        for i in range(0, 8, 2):  # blocks [[0, a], [1/a, 0]]: W^2 = I
            w[i, i + 1], w[i + 1, i] = a, 1 / a
        model.rnn[0].weight_hh_l0.copy_(w)
        model.head.weight.zero_()
        model.head.weight[0, 0::2] = 1.0  # dL/dh_{T-1} along the even units

    _, d = run(linear(t_len), SetWeights(period_two))
    ev = d["evidence"]["layers"][0]
    assert ev["ratio_first_last"] == pytest.approx(1.0 if t_len % 2 else a, rel=1e-6)
    assert d["layers"][0]["states"]["h"]["log_rate_per_step"] == pytest.approx(0, abs=1e-6)
    assert d["verdict"] == "healthy", d["reason"]


def test_class5_lstm_with_an_open_cell_path_is_not_vanishing() -> None:
    def open_cell(model) -> None:
        layer, n = model.rnn[0], model.hidden_size
        layer.bias_hh_l0.zero_()
        layer.bias_ih_l0.zero_()
        layer.bias_ih_l0[:n] = -8.0  # input gate shut
        layer.bias_ih_l0[n : 2 * n] = 8.0  # forget gate open

    spec = {
        "task": {"seq_len": 50},
        "model": {"cell": "lstm", "hidden_size": 8},
        "train": {"steps": 5, **FROZEN},
        "instrument": {"every": 1},
    }
    result, d = run(spec, SetWeights(open_cell))
    lay = d["layers"][0]
    c = result.summary["temporal_profile"]["window"][-1]["cell_layers"][0]
    assert c["ratio_first_last"] > 0.9  # ||dL/dc_0|| is 97 % of ||dL/dc_{T-1}||
    assert lay["states"]["h"]["ratio_first_last"] < 1e-3  # what the old rule read as vanishing
    assert lay["verdict"] == lay["states"]["c"]["verdict"] == "healthy"
    # The shut input gate writes little at any lag: the credit at the marked values is ~5e-5
    # of ideal, but it is as weak at the last step as at the first marker (it did not fade
    # with the lag), so the cell path's verdict stands and the weakness is reported apart.
    credit = d["evidence"]["credit"]
    assert credit["ratio"] < 1e-3 and credit["decay"] > 0.5
    assert credit["weak_at_every_lag"] and d["verdict"] == "healthy"
    without_credit = {**spec, "instrument": {"every": 1, "on": ["temporal", "spectrum"]}}
    _, d = run(without_credit, SetWeights(open_cell))
    assert d["verdict"] == "healthy" and d["layers"][0]["basis"] == "h"


def test_class6_three_tanh_layers_each_judged() -> None:
    spec = {
        "task": {"seq_len": 50},
        "model": {"cell": "rnn", "hidden_size": 16, "num_layers": 3},
        "train": {"steps": 5, **FROZEN},
        "instrument": {"every": 1},
    }

    def slow_top(model) -> None:
        for i, g in enumerate([1.0, 0.6, 0.4]):  # layer 0 keeps its memory, the upper ones not
            torch.nn.init.orthogonal_(model.rnn[i].weight_hh_l0, gain=g)

    _, d = run(spec, SetWeights(slow_top))
    verdicts = [lay["verdict"] for lay in d["layers"]]
    assert verdicts[1:] == ["vanishing", "vanishing"] and d["worst_layer"] == 2, d["reason"]
    assert d["layers"][2]["log_gain_over_lag"] < d["layers"][1]["log_gain_over_lag"]
    assert d["verdict"] == "vanishing" and "vanishing layers" in d["reason"]


ADDING_IRNN = {
    "task": {"seq_len": 30},
    "model": {"activation": "relu", "hidden_size": 32, "init": {"recurrent": "identity"}},
    # 600 steps: it reached the solved loss at step 399 with one CPU's products and at 499 with
    # another's (rounding alone sets when); at 600 either is past it
    "train": {"steps": 600, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.003}},
    "instrument": {"every": 20, "val_every": 50},
}


def test_class1_and_8_irnn_spike_absorbed_by_clipping_solved_and_healthy() -> None:
    result, d = run(ADDING_IRNN)
    s = result.summary
    assert s["solved_at_step"] is not None and d["outcome"]["result"] == "solved"
    assert s["max_grad_norm"] > 100 * ADDING_IRNN["train"].get("clip", {}).get("max_norm", 1.0)
    assert d["verdict"] == "healthy", d["reason"]
    # the same run with a global norm a thousand times larger: still judged by its rates
    big = diagnose({**s, "max_grad_norm": s["max_grad_norm"] * 1e3}, None, result.status)
    assert big["verdict"] == "healthy"


def test_class7_late_divergence_after_learning_and_an_immediate_one() -> None:
    spec = {**ADDING_IRNN, "train": {**ADDING_IRNN["train"], "steps": 360}}
    spec["instrument"] = {"every": 20, "val_every": 25}
    late_run, late = run(spec, BlowUpAt(350, 1e4))
    now_run, now = run(
        {
            "task": {"seq_len": 150},
            "model": {"activation": "relu", "hidden_size": 32, "init": {"gain": 2.0}},
            "train": {"steps": 20, "batch_size": 32, "clip": {"mode": "none"}},
            "instrument": {"every": 1},
        }
    )
    assert late_run.status == now_run.status == "diverged"
    assert late["verdict"] == now["verdict"] == "diverged"
    a, b = now["outcome"]["divergence"], late["outcome"]["divergence"]
    assert a["when"] == "immediate" and not a["after_learning"] and a["fraction"] < 0.1
    assert b["when"] == "late" and b["after_learning"] and b["step"] == 351
    assert b["fraction"] == pytest.approx(351 / 360)


def copy_preset_spec(label: str, hidden: int, steps: int = 150, every: int = 30) -> dict:
    """The copy-mitigations preset's point (delay 50) for `label`, its instruments as the
    preset sets them (every one on, the dynamics on every instrumented step) but for a
    shorter interval, reduced in size and steps; validation only at the end."""
    from core.presets import PRESETS
    from core.spec import SweepCreate
    from core.sweeps import expand, resolve

    points = expand(resolve(SweepCreate(preset="copy-mitigations")), math.inf)
    spec = next(
        s for p, s in points if p["variant"] == label and p["task.seq_len"] == 50 and s.seed == 0
    ).model_dump(mode="json", exclude_none=True)
    preset = PRESETS["copy-mitigations"]["base"]["instrument"]
    assert spec["instrument"]["dynamics_every"] == preset["dynamics_every"] == 1
    assert {"reach", "lyapunov", "temporal"} <= set(spec["instrument"]["on"])
    spec["model"]["hidden_size"] = hidden
    spec["train"].update(steps=steps, device="cpu")
    spec["instrument"].update(every=every, val_every=steps)
    return spec


def test_class2_copy_real_runs_a_tanh_rnn_vanishes_and_a_chrono_lstm_carries_it() -> None:
    """A loss at every step: the plain profiles mix each step's own term with what came back.
    The recall loss's reach at the 10 symbol steps (the reach instrument, on the last 5
    instrumented steps) is what decides: a tanh RNN's is 1e-17 of its value at recall (median
    over the window; lambda_1 -0.7 per step), a chrono-initialised LSTM's 0.12 (0.008 to 0.7
    over the window), seen at hidden 16 / 32, 150 steps. Both at the baseline: the verdict
    says why, not whether it learned."""
    tanh_run, tanh = run(copy_preset_spec("tanh RNN", 16))
    lstm_run, lstm = run(copy_preset_spec("LSTM, chrono init", 32))
    for result, d in [(tanh_run, tanh), (lstm_run, lstm)]:
        window = result.summary["reach"]["window"]
        assert [w["step"] for w in window] == [30, 60, 90, 120, 149]  # the end, not step 0
        assert d["layers"][0]["states"]["h"]["basis"] == "reach"
        assert d["outcome"]["result"] == "at_baseline"
    h = tanh["layers"][0]["states"]["h"]
    assert tanh["verdict"] == "vanishing" and tanh["worst_layer"] == 0, tanh["reason"]
    assert h["ratio_key_to_loss"] < 1e-6 and h["log_rate_per_step"] < -0.1
    assert {"lstm_or_gru", "gradient_flossing"} <= {s["mitigation"] for s in tanh["suggestions"]}
    h = lstm["layers"][0]["states"]["h"]
    # healthy on the reach, not `inconclusive` for being at the baseline; the cell profile
    # (mixed like the h-profile) is reported beside the reach, not judged
    assert lstm["verdict"] == "healthy", lstm["reason"]
    assert h["ratio_key_to_loss"] > 1e-2 and "c" not in lstm["layers"][0]["states"]
    assert h["cell_profile"]["verdict"] is None
