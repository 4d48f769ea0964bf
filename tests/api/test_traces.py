"""Traces as JSON after a real run: metrics, gradients, events, thinning."""

import pytest

from tests.worker.test_runner import SMALL, add_experiment
from tests.worker.test_train import EXPLODING


@pytest.fixture
def finished(sessions) -> str:  # noqa: ANN001
    from worker.runner import run_experiment

    exp_id = add_experiment(sessions, SMALL)
    assert run_experiment(exp_id) == "succeeded"
    return exp_id


def test_metrics_has_one_loss_per_step(client, finished: str) -> None:
    body = client.get(f"/v1/experiments/{finished}/metrics").json()
    assert body["steps"] == list(range(30)) and len(body["loss"]) == 30
    assert body["validation"]["steps"] == [9, 19, 29]
    assert body["lr"]["steps"] == [0, 5, 10, 15, 20, 25, 29]
    assert body["lr"]["values"] == [pytest.approx(1e-3)] * 7  # the constant default schedule
    exp = client.get(f"/v1/experiments/{finished}").json()
    assert exp["summary"]["final_val_loss"] == pytest.approx(body["validation"]["loss"][-1])
    assert exp["progress"] == {"step": 30, "total_steps": 30}


def test_thinning(client, finished: str) -> None:
    url = f"/v1/experiments/{finished}/metrics"
    full = client.get(url).json()
    assert client.get(url, params={"every": 7}).json()["steps"] == [0, 7, 14, 21, 28]
    ranged = client.get(url, params={"from_step": 10, "to_step": 12}).json()
    assert ranged["steps"] == [10, 11, 12] and ranged["loss"] == full["loss"][10:13]
    assert len(client.get(url, params={"max_points": 4}).json()["steps"]) <= 4
    bad = client.get(url, params={"every": 0})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.every"


def test_gradients_per_parameter_at_instrumented_steps(client, finished: str) -> None:
    body = client.get(f"/v1/experiments/{finished}/gradients").json()
    assert body["steps"] == [0, 5, 10, 15, 20, 25, 29]
    assert "rnn.0.weight_hh_l0" in body["parameters"] and "head.weight" in body["parameters"]
    for values in body["parameters"].values():
        assert len(values) == 7 and all(v >= 0 for v in values)
    totals = body["global_norm"]["before_clip"]
    for i, total in enumerate(totals):
        parts = sum(v[i] ** 2 for v in body["parameters"].values()) ** 0.5
        assert total == pytest.approx(parts, rel=1e-5)


def test_events_locate_the_nan(client, sessions) -> None:  # noqa: ANN001
    from worker.runner import run_experiment

    exp_id = add_experiment(sessions, {**SMALL, **EXPLODING})
    assert run_experiment(exp_id) == "diverged"
    exp = client.get(f"/v1/experiments/{exp_id}").json()
    assert exp["status"] == "diverged"
    items = client.get(f"/v1/experiments/{exp_id}/events").json()["items"]
    # Steps whose finite gradients only overflowed the norm come first, as norm_overflow.
    kinds = [e["kind"] for e in items]
    first = items[kinds.index("nonfinite")]
    assert set(kinds[: kinds.index("nonfinite")]) <= {"norm_overflow"}
    assert first["step"] == exp["summary"]["halted_at_step"]
    assert first["detail"]["origin"]["where"] and first["detail"]["action"] == "halt"
    only = client.get(f"/v1/experiments/{exp_id}/events", params={"kind": "halt"}).json()
    assert [e["kind"] for e in only["items"]] == ["halt"]
