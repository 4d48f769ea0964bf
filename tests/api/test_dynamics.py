"""GET /v1/experiments/{id}/dynamics after real runs (both backends): every group against the
run's own summary, thinning, and owner scoping."""

import math

import pytest

from tests.checks import assert_problem
from tests.factories import add_experiment, run_finished

COPY_LSTM = {
    "task": {"name": "copy", "seq_len": 5},  # T = 25
    "model": {"cell": "lstm", "hidden_size": 8, "num_layers": 2},
    "train": {"steps": 12, "batch_size": 8},
    "instrument": {"every": 2, "val_every": 10, "dynamics_every": 2},
}
INSTRUMENTED = [0, 2, 4, 6, 8, 10, 11]
DYNAMICS = [0, 4, 8, 11]  # every 2nd instrumented step


@pytest.fixture
def copy_run(sessions) -> str:
    return run_finished(sessions, COPY_LSTM)


def test_dynamics_serves_every_group(client, copy_run: str) -> None:
    body = client.get(f"/v1/experiments/{copy_run}/dynamics").json()
    summary = client.get(f"/v1/experiments/{copy_run}").json()["summary"]
    credit = body["credit"]
    assert credit["vector"]["steps"] == INSTRUMENTED
    assert all(len(v) == 10 and all(x >= 0 for x in v) for v in credit["vector"]["values"])
    assert credit["ratio"]["steps"] == INSTRUMENTED and credit["key_steps"] == list(range(10))
    last = summary["credit"]["window"][-1]
    assert credit["ratio"]["values"][-1] == pytest.approx(last["ratio"], rel=1e-12)
    assert credit["vector"]["values"][-1] == pytest.approx(last["per_key"], rel=1e-12)

    assert set(body["reach"]) == {"0", "1"}
    reach, terms, lags = body["reach"]["1"], summary["reach"]["terms"], summary["reach"]["lags"]
    assert reach["lags"]["steps"] == DYNAMICS and len(reach["lags"]["values"][0]) == 16
    matrix = reach["matrix"]
    assert matrix["terms"] == terms and matrix["lags"] == lags == list(range(25))
    for row in matrix["values"]:
        assert len(row) == len(lags) * len(terms)
        for i, tau in enumerate(lags):  # null where the lag reaches before t = 0
            for k, s in enumerate(terms):
                assert (row[i * len(terms) + k] is None) == (tau > s)
    assert reach["w_hh_split"]["bins"] == summary["reach"]["split_bins"]
    split = summary["reach"]["window"][-1]["layers"][1]["w_hh_split"]
    assert reach["w_hh_split"]["values"][-1] == pytest.approx(split, rel=1e-12)

    lyap = summary["lyapunov"]["window"][-1]["layers"]
    for layer in ("0", "1"):
        assert body["lyapunov"][layer]["steps"] == DYNAMICS
        exps = body["lyapunov"][layer]["values"][-1]
        assert exps == pytest.approx(lyap[int(layer)]["exponents"], rel=1e-12)
        assert len(exps) == 8 and all(math.isfinite(v) for v in exps)
        cond = body["conditioning"][layer]
        assert cond["lags"] == lyap[int(layer)]["lags"] == [1, 2, 4, 8, 16]
        for big, small in zip(
            cond["sigma_max"]["values"], cond["sigma_min"]["values"], strict=True
        ):
            assert all(0 < s <= b for b, s in zip(big, small, strict=True))
        cells = body["cell_temporal"][layer]
        assert cells["steps"] == INSTRUMENTED and all(len(v) == 25 for v in cells["values"])
        gates = body["gates"][layer]
        assert set(gates) == {"forget_mean", "forget_near_1", "forget_near_0"}
        assert gates["forget_mean"]["steps"] == INSTRUMENTED
        assert all(0 < v < 1 for v in gates["forget_mean"]["values"])
        window = summary["gates"]["window"][-1]["layers"][int(layer)]
        assert gates["forget_mean"]["values"][-1] == pytest.approx(window["forget_mean"])


def test_dynamics_are_thinned_like_the_other_traces(client, copy_run: str) -> None:
    url = f"/v1/experiments/{copy_run}/dynamics"
    full = client.get(url).json()
    every = client.get(url, params={"every": 2}).json()
    assert every["credit"]["vector"]["steps"] == INSTRUMENTED[::2]
    assert every["credit"]["vector"]["values"] == full["credit"]["vector"]["values"][::2]
    assert every["lyapunov"]["0"]["steps"] == DYNAMICS[::2]
    assert every["gates"]["1"]["forget_near_1"]["steps"] == INSTRUMENTED[::2]
    ranged = client.get(url, params={"from_step": 3, "to_step": 8}).json()
    assert ranged["reach"]["0"]["matrix"]["steps"] == [4, 8]
    assert ranged["cell_temporal"]["1"]["steps"] == [4, 6, 8]
    assert ranged["conditioning"]["0"]["lags"] == [1, 2, 4, 8, 16]
    capped = client.get(url, params={"max_points": 2}).json()
    assert 0 < len(capped["credit"]["ratio"]["steps"]) <= 2
    empty = client.get(url, params={"from_step": 100}).json()
    assert empty["lyapunov"]["1"] == {"steps": [], "values": []}


def test_dynamics_of_another_owner_is_a_404(client, copy_run: str, api_key) -> None:
    other = {"Authorization": f"Bearer {api_key('intruder')}"}
    assert_problem(client.get(f"/v1/experiments/{copy_run}/dynamics", headers=other), 404)
    assert_problem(client.get("/v1/experiments/missing/dynamics"), 404)


def test_dynamics_of_a_run_without_them(client, sessions) -> None:
    """Adding (one loss step, so no reach), rnn (no cell path, no gates); then a queued run."""
    spec = {**COPY_LSTM, "task": {"name": "adding", "seq_len": 10}, "model": {"hidden_size": 8}}
    body = client.get(f"/v1/experiments/{run_finished(sessions, spec)}/dynamics").json()
    assert body["reach"] == {} and body["cell_temporal"] == {} and body["gates"] == {}
    assert (
        body["credit"]["key_steps"] is not None and len(body["credit"]["vector"]["values"][0]) == 2
    )
    assert all(math.isfinite(v) for v in body["credit"]["ratio"]["values"])
    queued = client.get(f"/v1/experiments/{add_experiment(sessions, COPY_LSTM)}/dynamics").json()
    assert queued == {
        "credit": {"vector": None, "ratio": None, "key_steps": None},
        "reach": {},
        "lyapunov": {},
        "conditioning": {},
        "cell_temporal": {},
        "gates": {},
    }
