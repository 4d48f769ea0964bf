"""GET /v1/experiments/{id}/export.csv after a real run."""

import csv
import io

import pytest

from tests.api.test_experiments import assert_problem
from tests.api.test_plots import run
from tests.worker.test_runner import SMALL, add_experiment


def rows(resp) -> list[dict[str, str]]:  # noqa: ANN001
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(resp.text)))


def test_export_csv_has_every_scalar_series(client, sessions, api_key) -> None:
    exp_id = run(sessions)
    resp = client.get(f"/v1/experiments/{exp_id}/export.csv")
    assert resp.text.startswith("step,name,value\n")
    assert f'filename="{exp_id}.csv"' in resp.headers["content-disposition"]
    table = rows(resp)
    names = {r["name"] for r in table}
    assert {"loss", "val_loss", "grad_norm_total", "grad/rnn.0.weight_hh_l0"} <= names
    assert "spectrum/0/hh/sigma_max" in names and not any(n.startswith("temporal/") for n in names)
    metrics = client.get(f"/v1/experiments/{exp_id}/metrics").json()
    loss = [r for r in table if r["name"] == "loss"]
    assert [int(r["step"]) for r in loss] == metrics["steps"]
    assert [float(r["value"]) for r in loss] == pytest.approx(metrics["loss"], rel=1e-15)
    grads = client.get(f"/v1/experiments/{exp_id}/gradients").json()["parameters"]
    hh = [float(r["value"]) for r in table if r["name"] == "grad/rnn.0.weight_hh_l0"]
    assert hh == pytest.approx(grads["rnn.0.weight_hh_l0"])

    only = rows(client.get(f"/v1/experiments/{exp_id}/export.csv", params={"prefix": "grad/"}))
    assert only and all(r["name"].startswith("grad/") for r in only)
    assert len(only) == sum(r["name"].startswith("grad/") for r in table)

    other = {"Authorization": f"Bearer {api_key('intruder')}"}
    assert_problem(client.get(f"/v1/experiments/{exp_id}/export.csv", headers=other), 404)
    assert_problem(client.get("/v1/experiments/missing/export.csv"), 404)


def test_export_of_a_queued_experiment_is_the_header_only(client, sessions) -> None:
    exp_id = add_experiment(sessions, SMALL)
    assert client.get(f"/v1/experiments/{exp_id}/export.csv").text == "step,name,value\n"


def test_nonfinite_values_are_written_as_words() -> None:
    from api.routes.export import _number

    assert [_number(v) for v in (0.5, float("nan"), float("inf"), float("-inf"))] == [
        "0.5",
        "nan",
        "inf",
        "-inf",
    ]
