"""/v1/sweeps against the real databases and brokers."""

from sqlalchemy import func, select, update

from core.tables import Experiment
from tests.conftest import Backend

BASE = {"task": {"seq_len": 10}, "model": {"hidden_size": 8}, "train": {"steps": 5}}


def test_post_queues_every_point_and_lists_them(client, backend: Backend) -> None:
    resp = client.post(
        "/v1/sweeps",
        json={
            "name": "s",
            "base": BASE,
            "seeds": [0, 1],
            "grid": {"model.cell": ["rnn", "lstm", "gru"]},
        },
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert resp.headers["location"] == f"/v1/sweeps/{body['id']}"
    assert body["experiments"] == 6 and body["counts"] == {"queued": 6}
    assert body["status"] == "queued" and len(body["points"]) == 3
    assert all(len(p["experiments"]) == 2 for p in body["points"])
    assert backend.queue_depth() == 6
    listed = client.get("/v1/experiments", params={"sweep_id": body["id"]}).json()["items"]
    assert len(listed) == 6 and {e["sweep_params"]["model.cell"] for e in listed} == {
        "rnn",
        "lstm",
        "gru",
    }


def test_an_invalid_point_queues_nothing(client, backend: Backend, sessions) -> None:
    resp = client.post("/v1/sweeps", json={"base": BASE, "grid": {"model.hidden_size": [8, 5000]}})
    assert resp.status_code == 422
    body = resp.json()
    assert body["point"] == {"model.hidden_size": 5000}
    assert body["errors"][0]["field"] == "model.hidden_size"
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Experiment)) == 0
    assert backend.queue_depth() == 0


def test_bad_requests(client) -> None:
    assert client.post("/v1/sweeps", json={"grid": {"x": []}}).status_code == 422
    assert client.post("/v1/sweeps", json={"preset": "nope"}).json()["errors"][0]["field"] == (
        "preset"
    )
    assert client.post("/v1/sweeps", json={"gird": {}}).status_code == 422
    assert client.get("/v1/sweeps/nope").status_code == 404
    assert client.post("/v1/sweeps/nope/cancel").status_code == 404


def test_comparison_and_cancel(client, sessions) -> None:
    sweep = client.post(
        "/v1/sweeps",
        json={"base": BASE, "seeds": [0, 1], "grid": {"train.clip.mode": ["none", "norm"]}},
    ).json()
    # two finished as the workers would leave them; the rest is cancelled
    with sessions() as s:
        rows = s.scalars(
            select(Experiment)
            .where(Experiment.sweep_id == sweep["id"])
            .order_by(Experiment.created_at)
        ).all()
        none_rows = [r for r in rows if r.sweep_params["train.clip.mode"] == "none"]
        for r, loss in zip(none_rows, [0.02, 0.04], strict=True):
            r.status = "succeeded"
            r.summary = {
                "final_val_loss": loss,
                "solved_at_step": 40,
                "nan_events": 0,
                "max_grad_norm": 3.0,
            }
        s.commit()
    got = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert got["counts"] == {"succeeded": 2, "queued": 2} and got["status"] == "running"
    (point,) = [p for p in got["points"] if p["params"] == {"train.clip.mode": "none"}]
    assert point["stats"]["final_val_loss"]["mean"] == 0.03
    assert point["stats"]["solved_fraction"] == 1.0 and point["rank"] == 1
    assert got["ranking"][0] == {"train.clip.mode": "none"}
    cancelled = client.post(f"/v1/sweeps/{sweep['id']}/cancel").json()
    assert cancelled["counts"] == {"succeeded": 2, "cancelled": 2}
    assert cancelled["status"] == "finished"
    with sessions() as s:  # a running one is asked to stop
        s.execute(
            update(Experiment)
            .values(status="running", cancel_requested=False)
            .where(Experiment.status == "cancelled")
        )
        s.commit()
    client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    with sessions() as s:
        flags = s.scalars(
            select(Experiment.cancel_requested).where(Experiment.status == "running")
        ).all()
    assert flags == [True, True]


def test_presets_are_listed(client) -> None:
    presets = client.get("/v1/sweeps/presets").json()
    assert "adding-mitigations" in presets


def test_a_sweep_posted_as_curl_posts_it_is_read_as_json(client) -> None:
    """curl -d sends a form content type: the body is read as JSON whatever the type says,
    as POST /v1/experiments does."""
    import json

    base = {"train": {"steps": 5}, "model": {"hidden_size": 4}}
    ok = json.dumps({"base": base, "grid": {"model.cell": ["rnn", "gru"]}}).encode()
    body = json.dumps({"base": base, "grid": {"seed": [1, 2]}}).encode()  # seeds go in `seeds`
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = client.post("/v1/sweeps", content=ok, headers=form)
    assert resp.status_code == 202, resp.text
    assert resp.json()["experiments"] == 2
    assert client.post("/v1/sweeps", content=body, headers=form).status_code == 422
