"""The temporal profiles in /gradients, the other instruments in /instruments, and the
diagnosis on the experiment, after real runs (both backends)."""

import subprocess
import sys

import pytest

from tests.factories import add_experiment

LSTM2 = {
    "task": {"seq_len": 10},
    "model": {"cell": "lstm", "hidden_size": 8, "num_layers": 2},
    "train": {"steps": 30, "batch_size": 8, "clip": {"mode": "norm", "max_norm": 0.05}},
    "instrument": {"every": 5, "val_every": 10},
}
STEPS = [0, 5, 10, 15, 20, 25, 29]


@pytest.fixture
def finished(sessions) -> str:
    from worker.runner import run_experiment

    exp_id = add_experiment(sessions, LSTM2)
    assert run_experiment(exp_id) == "succeeded"
    return exp_id


def test_gradients_carry_the_temporal_profiles(client, finished: str) -> None:
    body = client.get(f"/v1/experiments/{finished}/gradients").json()
    assert body["steps"] == STEPS
    temporal = body["temporal"]
    assert temporal["quantity"] == "grad_norm_hidden"
    assert [d["layer"] for d in temporal["layers"]] == [0, 1]
    for d in temporal["layers"]:
        assert d["steps"] == STEPS and len(d["values"]) == len(STEPS)
        assert all(len(row) == 10 and all(v > 0 for v in row) for row in d["values"])
    before, after = body["global_norm"]["before_clip"], body["global_norm"]["after_clip"]
    assert after == pytest.approx([min(b, 0.05) for b in before], rel=1e-4)
    params = set(body["parameters"])
    assert {"lstm.0.weight_hh_l0", "lstm.1.weight_ih_l0", "head.weight"} <= params
    assert all(p.startswith(("lstm.", "head.")) for p in params)


def test_temporal_profiles_are_thinned_like_the_rest(client, finished: str) -> None:
    url = f"/v1/experiments/{finished}/gradients"
    full = client.get(url).json()["temporal"]["layers"][1]
    every = client.get(url, params={"every": 2}).json()
    assert every["steps"] == [0, 10, 20, 29]
    layer = every["temporal"]["layers"][1]
    assert layer["steps"] == [0, 10, 20, 29] and layer["values"] == full["values"][::2]
    ranged = client.get(url, params={"from_step": 5, "to_step": 15}).json()["temporal"]
    assert ranged["layers"][0]["steps"] == [5, 10, 15]
    capped = client.get(url, params={"max_points": 3}).json()["temporal"]["layers"][0]
    assert 0 < len(capped["steps"]) <= 3 and len(capped["values"]) == len(capped["steps"])


def test_instruments_route(client, finished: str) -> None:
    body = client.get(f"/v1/experiments/{finished}/instruments").json()
    assert set(body["spectrum"]) == {"0", "1"}
    for blocks in body["spectrum"].values():
        assert set(blocks) == {"i", "f", "g", "o"}
        for q in blocks.values():
            assert q["sigma_max"]["steps"] == STEPS
            sigma = dict(zip(q["sigma_max"]["steps"], q["sigma_max"]["values"], strict=True))
            radius = dict(zip(q["radius"]["steps"], q["radius"]["values"], strict=True))
            assert {STEPS[0], STEPS[-1]} <= set(radius) <= set(sigma)  # dynamics steps, last
            for step, r in radius.items():
                assert 0 < r <= sigma[step] * (1 + 1e-6)  # |eigenvalue| <= sigma_max
    assert set(body["saturation"]["1"]) == {"i", "f", "g", "o"}
    assert all(0 <= v <= 1 for v in body["saturation"]["0"]["f"]["values"])
    # an lstm's parameters are named after the cell, in every per-parameter series
    assert {"lstm.0.weight_hh_l0", "lstm.1.bias_ih_l0"} <= body["update_ratio"].keys()
    assert not any(name.startswith("rnn.") for name in body["update_ratio"])
    ratio = body["update_ratio"]["lstm.0.weight_hh_l0"]
    assert ratio["steps"] == STEPS and all(v > 0 for v in ratio["values"])
    assert body["weight_norm"]["head.weight"]["steps"] == STEPS
    clip = body["clipping"]
    assert clip["fired"]["steps"] == list(range(30)) and set(clip["fired"]["values"]) <= {0, 1}
    exp = client.get(f"/v1/experiments/{finished}").json()
    assert clip["fired_fraction"] == pytest.approx(exp["summary"]["clip_fraction"])
    thin = client.get(f"/v1/experiments/{finished}/instruments", params={"every": 3}).json()
    assert thin["clipping"]["fired"]["steps"] == list(range(0, 30, 3))


def test_experiment_carries_the_diagnosis(client, finished: str) -> None:
    d = client.get(f"/v1/experiments/{finished}").json()["diagnosis"]
    assert d["verdict"] in ("vanishing", "exploding", "healthy", "inconclusive")
    ev = d["evidence"]
    assert ev["seq_len"] == 10 and ev["profile_step"] == 29 and ev["ratio_first_last"] > 0
    assert isinstance(d["suggestions"], list)


def test_instruments_off_leave_empty_groups(client, sessions) -> None:
    from worker.runner import run_experiment

    exp_id = add_experiment(sessions, {**LSTM2, "instrument": {"every": 5, "on": []}})
    assert run_experiment(exp_id) == "succeeded"
    grads = client.get(f"/v1/experiments/{exp_id}/gradients").json()
    assert grads["temporal"]["layers"] == [] and len(grads["steps"]) == len(STEPS)
    body = client.get(f"/v1/experiments/{exp_id}/instruments").json()
    assert body == {
        "spectrum": {},
        "saturation": {},
        "update_ratio": {},
        "weight_norm": {},
        "clipping": {},
    }
    assert client.get(f"/v1/experiments/{exp_id}").json()["diagnosis"]["verdict"] == (
        "inconclusive"
    )


def test_the_api_imports_neither_torch_nor_numpy() -> None:
    code = "import sys, api.main; assert not {'torch', 'numpy'} & set(sys.modules), sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
