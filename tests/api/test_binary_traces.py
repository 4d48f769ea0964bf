"""Traces as .npz (Accept: application/x-npz): the same numbers as the JSON answer, bit for
bit where JSON has them, thinned alike, streamed, NaN kept."""

import io
import math
import zipfile

import numpy as np
import pytest

from tests.factories import SMALL, add_experiment

NPZ = {"Accept": "application/x-npz"}


@pytest.fixture
def finished(sessions) -> str:
    from worker.runner import run_experiment

    spec = {**SMALL, "model": {**SMALL.get("model", {}), "num_layers": 2}}
    exp_id = add_experiment(sessions, spec)
    assert run_experiment(exp_id) == "succeeded"
    return exp_id


def npz(response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npz"
    with np.load(io.BytesIO(response.content)) as archive:
        return {k: archive[k] for k in archive.files}


def test_gradients_as_npz_equal_the_json_answer(client, finished: str) -> None:
    url = f"/v1/experiments/{finished}/gradients"
    body, arrays = client.get(url).json(), npz(client.get(url, headers=NPZ))
    assert arrays["grad_norm_total/steps"].tolist() == body["steps"]
    assert arrays["grad_norm_total/values"].tolist() == body["global_norm"]["before_clip"]
    for name, values in body["parameters"].items():
        assert arrays[f"grad/{name}/values"].tolist() == values
    assert len(body["temporal"]["layers"]) == 2
    for layer in body["temporal"]["layers"]:
        key = f"temporal/{layer['layer']}"
        assert arrays[f"{key}/steps"].tolist() == layer["steps"]
        assert arrays[f"{key}/values"].dtype == np.float64
        assert arrays[f"{key}/values"].tolist() == layer["values"]  # (n, T), exact
    assert arrays["temporal/0/values"].shape == (len(body["steps"]), SMALL["task"]["seq_len"])


@pytest.mark.parametrize(
    "params", [{"every": 3}, {"from_step": 5, "to_step": 20}, {"max_points": 2}]
)
def test_thinning_applies_to_every_series_as_in_json(client, finished: str, params) -> None:
    url = f"/v1/experiments/{finished}/gradients"
    body = client.get(url, params=params).json()
    arrays = npz(client.get(url, params=params, headers=NPZ))
    assert arrays["grad_norm_total/steps"].tolist() == body["steps"]
    layer = body["temporal"]["layers"][1]
    assert arrays["temporal/1/values"].tolist() == layer["values"]


def test_metrics_and_instruments_as_npz(client, finished: str) -> None:
    base = f"/v1/experiments/{finished}"
    metrics, arrays = (
        client.get(f"{base}/metrics").json(),
        npz(client.get(f"{base}/metrics", headers=NPZ)),
    )
    assert arrays["loss/steps"].tolist() == metrics["steps"]
    assert arrays["loss/values"].tolist() == metrics["loss"]
    assert arrays["val_loss/values"].tolist() == metrics["validation"]["loss"]
    inst = client.get(f"{base}/instruments").json()
    arrays = npz(client.get(f"{base}/instruments", headers=NPZ))
    radius = inst["spectrum"]["1"]["hh"]["radius"]
    assert arrays["spectrum/1/hh/radius/values"].tolist() == radius["values"]
    assert arrays["clip/fired/values"].tolist() == inst["clipping"]["fired"]["values"]


def test_nonfinite_values_stay_themselves_and_json_stays_the_default(client, sessions) -> None:
    from tests.factories import EXPLODING
    from worker.runner import run_experiment

    exp_id = add_experiment(sessions, EXPLODING)
    assert run_experiment(exp_id) == "diverged"
    url = f"/v1/experiments/{exp_id}/metrics"
    body = client.get(url).json()
    arrays = npz(client.get(url, headers=NPZ))
    assert body["loss"][-1] is None and math.isnan(arrays["loss/values"][-1])
    assert client.get(url).headers["content-type"].startswith("application/json")


def test_the_archive_is_streamed_in_pieces(client, finished: str, monkeypatch) -> None:
    monkeypatch.setattr("api.binary.PIECE", 256)  # pieces of 1 MiB at volume
    with client.stream("GET", f"/v1/experiments/{finished}/gradients", headers=NPZ) as r:
        pieces = list(r.iter_raw())
    assert len(pieces) > 4  # member by member, not one body
    names = zipfile.ZipFile(io.BytesIO(b"".join(pieces))).namelist()
    assert "temporal/0/values.npy" in names and "grad_norm_total/steps.npy" in names


def test_another_owners_experiment_is_404_in_npz_too(client, api_key, finished: str) -> None:
    other = {**NPZ, "Authorization": f"Bearer {api_key('someone-else')}"}
    r = client.get(f"/v1/experiments/{finished}/gradients", headers=other)
    assert r.status_code == 404


def test_the_python_client_reads_the_arrays(client, finished: str) -> None:
    from gradlab import Client

    gl = Client(http=client)
    arrays = gl.arrays(finished, "gradients", every=2)
    body = client.get(f"/v1/experiments/{finished}/gradients", params={"every": 2}).json()
    assert arrays["temporal/0/values"].tolist() == body["temporal"]["layers"][0]["values"]
    both = gl.traces(finished, arrays=None)  # numpy is here: arrays
    assert both["metrics"]["loss/values"].shape == (30,)
    assert gl.traces(finished)["metrics"]["steps"] == list(range(30))  # JSON by default
