"""External runs through the ingest API (the wire gradlab.watch speaks), on both backends:
created running and owner-scoped, batches in the packed trace format stored once per sequence
number, finished with a diagnosis from the client's summary, failed (never re-run) when the
client stops beating, and read by the same routes as the service's own runs."""

import base64
import json
from datetime import timedelta

import numpy as np
import pytest

from core.tables import Event, Experiment, SeriesChunk, WebhookDelivery, utcnow
from tests.checks import assert_problem
from tests.factories import SMALL_SUBMIT
from worker.reconciler import reconcile

LAYERS = [
    {"layer": 0, "module": "rnn", "index": 0, "cell": "lstm", "input_size": 3, "hidden_size": 4},
    {"layer": 1, "module": "rnn", "index": 1, "cell": "lstm", "input_size": 4, "hidden_size": 4},
]


def packed(name: str, steps: list[int], values: np.ndarray) -> dict:
    values = np.asarray(values, dtype="<f8").reshape(len(steps), -1)
    return {
        "name": name,
        "width": values.shape[1],
        "steps": base64.b64encode(np.asarray(steps, dtype="<i8").tobytes()).decode(),
        "values": base64.b64encode(values.tobytes()).decode(),
    }


def create(client, **over) -> dict:
    resp = client.post(
        "/v1/experiments/external", json={"name": "my loop", "layers": LAYERS, **over}
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


def vanishing_profile(t: int = 20) -> list[float]:
    return [0.5**k for k in range(t - 1, -1, -1)]  # p[0] / p[T-1] = 0.5^19 ~ 2e-6


def test_an_external_run_is_created_running_and_is_the_owners(client, api_key) -> None:
    run = create(client, tags=["mine"], every=5)
    assert run["status"] == "running" and run["source"] == "external" and run["attempt"] == 1
    assert run["spec"]["source"] == "external" and run["spec"]["model"]["cell"] == "lstm"
    assert run["spec"]["instrument"]["every"] == 5
    got = client.get(f"/v1/experiments/{run['id']}").json()
    assert got["source"] == "external" and got["tags"] == ["mine"]
    listed = client.get("/v1/experiments").json()["items"]
    assert [e["id"] for e in listed] == [run["id"]]
    other = {"Authorization": f"Bearer {api_key('someone-else')}"}
    for path in ("", "/batches", "/heartbeat", "/finish"):
        method = client.get if path == "" else client.post
        body = {"seq": 0} if path == "/batches" else {}
        resp = method(f"/v1/experiments/{run['id']}{path}", headers=other, **_json(method, body))
        assert_problem(resp, 404)


def _json(method, body: dict) -> dict:
    return {} if method.__name__ == "get" else {"json": body}


def test_a_batch_is_stored_once_whatever_the_retries(client, sessions) -> None:
    run = create(client)
    profile = np.array([vanishing_profile(), vanishing_profile()])
    batch = {
        "seq": 0,
        "step": 20,
        "series": [
            packed("loss", list(range(20)), np.linspace(1.0, 0.5, 20)),
            packed("temporal/0", [0, 10], profile),
            packed("grad/rnn.weight_hh_l0", [0, 10], [0.3, 0.2]),
            packed("grad_norm_total", [0, 10], [1.5, 1.25]),
        ],
        "events": [{"step": 7, "kind": "nonfinite", "detail": {"origin": {"where": "loss"}}}],
    }
    first = client.post(f"/v1/experiments/{run['id']}/batches", json=batch)
    assert first.status_code == 200 and first.json() == {"seq": 0, "stored": True}
    for _ in range(3):  # a client unsure whether its upload arrived sends it again
        again = client.post(f"/v1/experiments/{run['id']}/batches", json=batch)
        assert again.status_code == 200 and again.json() == {"seq": 0, "stored": False}
    with sessions() as s:
        assert s.query(SeriesChunk).filter_by(experiment_id=run["id"]).count() == 4
        assert s.query(Event).filter_by(experiment_id=run["id"]).count() == 1
        assert s.get(Experiment, run["id"]).progress_step == 20
    metrics = client.get(f"/v1/experiments/{run['id']}/metrics").json()
    assert metrics["steps"] == list(range(20))
    assert metrics["loss"] == pytest.approx(np.linspace(1.0, 0.5, 20).tolist(), abs=0)
    grads = client.get(f"/v1/experiments/{run['id']}/gradients").json()
    assert grads["steps"] == [0, 10]
    assert grads["parameters"]["rnn.weight_hh_l0"] == [0.3, 0.2]
    assert grads["temporal"]["layers"][0]["values"] == profile.tolist()
    second = {**batch, "seq": 1, "series": [packed("loss", [20], [0.25])], "events": []}
    assert client.post(f"/v1/experiments/{run['id']}/batches", json=second).json()["stored"]
    assert client.get(f"/v1/experiments/{run['id']}/metrics").json()["steps"][-1] == 20


@pytest.mark.parametrize(
    ("series", "field"),
    [
        ({"name": "loss", "steps": "not base64!", "values": ""}, "series.0.steps"),
        (
            {
                "name": "loss",
                "width": 2,
                "steps": base64.b64encode(np.zeros(3, "<i8").tobytes()).decode(),
                "values": base64.b64encode(np.zeros(3, "<f8").tobytes()).decode(),
            },
            "series.0.values",
        ),
        ({"name": "a//b", "steps": "", "values": ""}, "series.0.name"),
        (
            {
                "name": "loss",
                "steps": base64.b64encode(np.array([-1], "<i8").tobytes()).decode(),
                "values": base64.b64encode(np.zeros(1, "<f8").tobytes()).decode(),
            },
            "series.0.steps",
        ),
    ],
)
def test_a_malformed_batch_is_a_422_naming_the_field(client, sessions, series, field) -> None:
    run = create(client)
    resp = client.post(f"/v1/experiments/{run['id']}/batches", json={"seq": 0, "series": [series]})
    problem = assert_problem(resp, 422)
    assert field in [e["field"] for e in problem["errors"]]
    with sessions() as s:  # nothing stored, and the seq is still free
        assert s.query(SeriesChunk).filter_by(experiment_id=run["id"]).count() == 0
    ok = client.post(f"/v1/experiments/{run['id']}/batches", json={"seq": 0})
    assert ok.json()["stored"] is True


def test_a_service_run_takes_no_batches(client) -> None:
    exp = client.post("/v1/experiments", json=SMALL_SUBMIT).json()
    assert_problem(client.post(f"/v1/experiments/{exp['id']}/batches", json={"seq": 0}), 409)
    assert_problem(client.post(f"/v1/experiments/{exp['id']}/finish", json={}), 409)


def finished_run(client) -> dict:
    run = create(client, name="vanishing loop")
    batch = {
        "seq": 0,
        "step": 11,
        "series": [
            packed("loss", list(range(11)), np.linspace(1.0, 0.5, 11)),
            packed("temporal/0", [0, 10], np.array([vanishing_profile()] * 2)),
            packed("temporal/1", [0, 10], np.ones((2, 20))),
            packed("grad_norm_total", [0, 10], [1.5, 1.25]),
            packed("grad/rnn.weight_hh_l0", [0, 10], [0.3, 0.2]),
            packed("spectrum/0/f/sigma_max", [0, 10], [0.9, 0.95]),
            packed("spectrum/0/f/radius", [0, 10], [0.5, 0.6]),
        ],
    }
    assert client.post(f"/v1/experiments/{run['id']}/batches", json=batch).status_code == 200
    summary = {
        "final_loss": 0.5,
        "max_grad_norm": 1.5,
        "nan_events": 0,
        "temporal_profile": {
            "first": {"step": 0, "layers": [vanishing_profile(), [1.0] * 20]},
            "last": {"step": 10, "layers": [vanishing_profile(), [1.0] * 20]},
            # an LSTM's cell path as the client sends it: raw, turned into evidence on finish
            "window": [
                {"step": 10, "layers": [vanishing_profile()], "cell_layers": [vanishing_profile()]}
            ],
        },
    }
    resp = client.post(f"/v1/experiments/{run['id']}/finish", json={"summary": summary, "step": 11})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_finish_diagnoses_the_clients_summary(client) -> None:
    done = finished_run(client)
    assert done["status"] == "succeeded" and done["progress"]["step"] == 11
    diagnosis = done["diagnosis"]
    assert diagnosis["verdict"] == "vanishing"
    ev = diagnosis["evidence"]
    assert ev["ratio_first_last"] == pytest.approx(0.5**19, rel=1e-12)
    assert ev["log_rate_per_step"] == pytest.approx(np.log(0.5), rel=1e-12)
    assert ev["profile_step"] == 10 and ev["seq_len"] == 20
    window = done["summary"]["temporal_profile"]["window"][0]
    assert window["cell_layers"][0]["ratio_first_last"] == pytest.approx(0.5**19, rel=1e-12)
    # finishing again with the same status is harmless; another status is a conflict
    again = client.post(f"/v1/experiments/{done['id']}/finish", json={})
    assert again.status_code == 200 and again.json()["diagnosis"] == diagnosis
    assert_problem(
        client.post(f"/v1/experiments/{done['id']}/finish", json={"status": "failed"}), 409
    )
    late = client.post(f"/v1/experiments/{done['id']}/batches", json={"seq": 1})
    assert_problem(late, 409)
    replay = client.post(f"/v1/experiments/{done['id']}/batches", json={"seq": 0})
    assert replay.json() == {"seq": 0, "stored": False}  # a late retry of a stored batch


def test_plots_report_export_and_stream_serve_an_external_run(client) -> None:
    done = finished_run(client)
    base = f"/v1/experiments/{done['id']}"
    for name in ("temporal", "loss", "gradients", "spectrum"):
        png = client.get(f"{base}/plots/{name}.png")
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), name
    report = client.get(f"{base}/report")
    assert report.status_code == 200 and "vanishing" in report.text
    assert "vanishing loop" in report.text
    csv = client.get(f"{base}/export.csv").text.splitlines()
    assert csv[0] == "step,name,value"
    assert "10,grad_norm_total,1.25" in csv and len([r for r in csv if ",loss," in r]) == 11
    tb = client.get(f"{base}/export/tensorboard")
    assert tb.status_code == 200 and tb.content[:2] == b"\x1f\x8b"
    events = []
    with client.stream("GET", f"{base}/stream") as resp:
        for line in resp.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
            elif line.startswith("data: ") and events[-1] == "batch":
                batch = json.loads(line.removeprefix("data: "))
                assert batch["loss"]["steps"] == list(range(11))
    assert events[0] == "status" and "batch" in events and events[-1] == "end"
    overlay = client.get(f"/v1/plots/overlay.png?ids={done['id']}&quantity=loss")
    assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")


def test_the_finished_webhook_and_the_nan_webhook_fire_for_an_external_run(
    client, sessions, hooks
) -> None:
    notify = {"url": "http://127.0.0.1:9/hook", "events": ["finished", "nan"]}
    run = create(client, notify=notify)
    nan = {"step": 3, "kind": "nonfinite", "detail": {"origin": {"where": "loss"}}}
    for seq in (0, 1):  # the nan webhook goes once per run, not once per event
        body = {"seq": seq, "events": [nan]}
        assert client.post(f"/v1/experiments/{run['id']}/batches", json=body).status_code == 200
    finish = {"status": "diverged", "summary": {"nan_events": 2}}
    done = client.post(f"/v1/experiments/{run['id']}/finish", json=finish).json()
    assert done["diagnosis"]["verdict"] == "diverged"
    with sessions() as s:
        rows = s.query(WebhookDelivery).filter_by(experiment_id=run["id"]).all()
        assert sorted(d.event for d in rows) == ["finished", "nan"]
        finished = next(d for d in rows if d.event == "finished")
        assert finished.payload["status"] == "diverged"
    hooks_listed = client.get(f"/v1/experiments/{run['id']}/webhooks").json()["items"]
    assert len(hooks_listed) == 2


def test_a_private_webhook_url_is_refused_for_an_external_run(client) -> None:
    resp = client.post(
        "/v1/experiments/external", json={"notify": {"url": "http://127.0.0.1:9/hook"}}
    )
    problem = assert_problem(resp, 422)
    assert problem["errors"][0]["field"] == "notify.url"


def test_a_silent_client_fails_its_run_and_it_is_never_requeued(
    client, sessions, settings, backend
) -> None:
    run = create(client)
    beat = client.post(f"/v1/experiments/{run['id']}/heartbeat")
    assert beat.json() == {"status": "running", "cancel_requested": False}
    assert reconcile(sessions, settings) == {"requeued": 0, "failed": 0, "resent": 0}
    with sessions() as s:
        row = s.get(Experiment, run["id"])
        row.heartbeat_at = utcnow() - timedelta(seconds=settings.stale_after_s + 5)
        s.commit()
    before = backend.queue_depth()
    assert reconcile(sessions, settings)["failed"] == 1
    assert backend.queue_depth() == before  # nothing sent: no worker can run a user's loop
    got = client.get(f"/v1/experiments/{run['id']}").json()
    assert got["status"] == "failed" and got["error"]["type"] == "client_lost"
    events = client.get(f"/v1/experiments/{run['id']}/events").json()["items"]
    assert [e["kind"] for e in events] == ["client_lost"]
    assert_problem(client.post(f"/v1/experiments/{run['id']}/heartbeat"), 409)
    assert_problem(client.post(f"/v1/experiments/{run['id']}/batches", json={"seq": 0}), 409)


def test_cancel_reaches_the_client_through_its_heartbeat(client) -> None:
    run = create(client)
    assert client.post(f"/v1/experiments/{run['id']}/cancel").status_code == 202
    beat = client.post(f"/v1/experiments/{run['id']}/heartbeat").json()
    assert beat["cancel_requested"] is True
    done = client.post(f"/v1/experiments/{run['id']}/finish", json={"status": "cancelled"})
    assert done.json()["status"] == "cancelled"


def post_raw(client, path: str, body: dict):
    """JSON with NaN and Infinity literals, as Python's json writes them (httpx refuses to)."""
    headers = {"Content-Type": "application/json"}
    return client.post(path, content=json.dumps(body), headers=headers)


def test_nonfinite_numbers_from_a_client_are_stored_as_words(client) -> None:
    resp = post_raw(
        client,
        "/v1/experiments/external",
        {"config": {"lr": float("nan"), "clip": float("inf")}},
    )
    run = resp.json()
    assert resp.status_code == 201 and run["spec"]["config"] == {"lr": "nan", "clip": "inf"}
    ev = {"step": 1, "kind": "nonfinite", "detail": {"norm": float("inf")}}
    batch = post_raw(client, f"/v1/experiments/{run['id']}/batches", {"seq": 0, "events": [ev]})
    assert batch.status_code == 200
    events = client.get(f"/v1/experiments/{run['id']}/events").json()["items"]
    assert events[0]["detail"] == {"norm": "inf"}
    done = post_raw(
        client,
        f"/v1/experiments/{run['id']}/finish",
        {"status": "failed", "error": {"loss": float("nan")}, "summary": {"x": float("nan")}},
    ).json()
    assert done["error"] == {"loss": "nan"} and done["summary"]["x"] == "nan"


@pytest.mark.parametrize(
    ("summary", "field"),
    [
        ({"max_grad_norm": "big"}, "summary.max_grad_norm"),
        ({"nan_events": True}, "summary.nan_events"),
        ({"temporal_profile": [1, 2]}, "summary.temporal_profile"),
        ({"spectrum": {"0": {"f": 3}}}, "summary.spectrum.0.f"),
    ],
)
def test_a_summary_the_diagnosis_cannot_read_is_a_422(client, summary, field) -> None:
    run = create(client)
    resp = client.post(f"/v1/experiments/{run['id']}/finish", json={"summary": summary})
    assert_problem(resp, 422, field)
    assert client.get(f"/v1/experiments/{run['id']}").json()["status"] == "running"
