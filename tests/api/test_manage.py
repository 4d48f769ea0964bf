"""PATCH and DELETE /v1/experiments/{id}, the list's filters, and GET /v1/sweeps, on both
databases."""

from sqlalchemy import func, select, update

from core.tables import Event, Experiment, SeriesChunk, Sweep, WebhookDelivery
from tests.checks import assert_problem
from tests.factories import SMALL, SMALL_SUBMIT, run_finished

BASE = {"task": {"seq_len": 10}, "model": {"hidden_size": 8}, "train": {"steps": 5}}


def test_patch_changes_name_tags_and_note_only(client) -> None:
    exp = client.post("/v1/experiments", json={**SMALL_SUBMIT, "name": "a", "tags": ["x"]}).json()
    url = f"/v1/experiments/{exp['id']}"

    got = client.patch(url, json={"tags": [" t50 ", "baseline", "t50"], "note": "lr too high"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["tags"] == ["t50", "baseline"] and body["note"] == "lr too high"
    assert body["name"] == "a" and body["spec"] == exp["spec"]  # left out: unchanged
    again = client.get(url).json()
    assert again["tags"] == ["t50", "baseline"] and again["note"] == "lr too high"

    cleared = client.patch(url, json={"name": "", "note": None}).json()
    assert cleared["name"] is None and cleared["note"] is None and cleared["tags"] == body["tags"]
    assert client.patch(url, json={"name": "renamed"}).json()["name"] == "renamed"

    assert_problem(client.patch(url, json={"status": "succeeded"}), 422, "status")
    assert_problem(client.patch(url, json={"tags": ["x" * 51]}), 422, "tags.0")
    assert_problem(client.patch(url, json={"note": "n" * 10_001}), 422, "note")
    assert_problem(client.patch(url, json={"note": "a\x00b"}), 422, "note")  # PostgreSQL: no NUL
    assert_problem(client.patch(url, json={"tags": ["\x00"]}), 422, "tags")
    assert client.get(url).json()["status"] == "queued"
    assert_problem(client.patch("/v1/experiments/nope", json={"note": "x"}), 404)


def test_another_owner_can_neither_edit_nor_delete(client, anonymous, api_key, sessions) -> None:
    exp_id = run_finished(sessions, SMALL)  # owner "tester"
    other = {"Authorization": f"Bearer {api_key('someone-else')}"}
    url = f"/v1/experiments/{exp_id}"
    assert_problem(anonymous.patch(url, json={"note": "x"}, headers=other), 404)
    assert_problem(anonymous.delete(url, headers=other), 404)
    assert_problem(anonymous.delete(url, headers={"Authorization": ""}), 401)
    assert client.get(url).json()["note"] is None


def test_delete_removes_a_finished_run_and_everything_stored(client, sessions) -> None:
    exp_id = run_finished(sessions, SMALL)
    keep_id = run_finished(sessions, SMALL)
    with sessions() as s:
        s.add(Event(experiment_id=exp_id, attempt=1, step=3, kind="note", detail={}))
        s.add(
            WebhookDelivery(
                experiment_id=exp_id, attempt=1, event="finished", url="http://x", payload={}
            )
        )
        s.commit()
        assert s.scalar(select(func.count()).where(SeriesChunk.experiment_id == exp_id)) > 0

    resp = client.delete(f"/v1/experiments/{exp_id}")
    assert resp.status_code == 204, resp.text
    assert_problem(client.get(f"/v1/experiments/{exp_id}"), 404)
    assert_problem(client.delete(f"/v1/experiments/{exp_id}"), 404)
    with sessions() as s:
        for table in (SeriesChunk, Event, WebhookDelivery):
            assert s.scalar(select(func.count()).where(table.experiment_id == exp_id)) == 0
        # the other run is untouched
        assert s.scalar(select(func.count()).where(SeriesChunk.experiment_id == keep_id)) > 0
    assert [e["id"] for e in client.get("/v1/experiments").json()["items"]] == [keep_id]


def test_delete_refuses_an_active_run(client, sessions) -> None:
    exp = client.post("/v1/experiments", json=SMALL_SUBMIT).json()
    url = f"/v1/experiments/{exp['id']}"
    body = assert_problem(client.delete(url), 409)
    assert body["status_value"] == "queued" and "cancel it first" in body["detail"]
    with sessions() as s:
        s.execute(update(Experiment).where(Experiment.id == exp["id"]).values(status="running"))
        s.commit()
    assert assert_problem(client.delete(url), 409)["status_value"] == "running"
    with sessions() as s:
        s.execute(update(Experiment).where(Experiment.id == exp["id"]).values(status="cancelled"))
        s.commit()
    assert client.delete(url).status_code == 204


def test_list_filters_by_verdict_cell_task_and_name(client, sessions) -> None:
    made = {}
    for cell, task, name in (
        ("rnn", "adding", "Tanh baseline"),
        ("lstm", "copy", "lstm on copy"),
        ("gru", "adding", "gru 100% test"),
    ):
        spec = {
            **SMALL_SUBMIT,
            "name": name,
            "model": {"cell": cell, "hidden_size": 8},
            "task": {"name": task, "seq_len": 10},
        }
        made[cell] = client.post("/v1/experiments", json=spec).json()["id"]
    with sessions() as s:
        s.execute(
            update(Experiment)
            .where(Experiment.id == made["lstm"])
            .values(status="succeeded", diagnosis={"verdict": "vanishing", "evidence": {}})
        )
        s.commit()

    def ids(**params) -> list[str]:
        resp = client.get("/v1/experiments", params=params)
        assert resp.status_code == 200, resp.text
        return [e["id"] for e in resp.json()["items"]]

    assert ids(cell="gru") == [made["gru"]]
    assert ids(task="copy") == [made["lstm"]]
    assert ids(task="adding") == [made["gru"], made["rnn"]]
    assert ids(verdict="vanishing") == [made["lstm"]] and ids(verdict="healthy") == []
    assert ids(name="tanh") == [made["rnn"]]  # any case
    assert ids(name="100%") == [made["gru"]]  # % is a character, not a wildcard
    assert ids(name="%") == [made["gru"]]
    assert ids(cell="lstm", task="adding") == []
    assert_problem(client.get("/v1/experiments", params={"cell": "cnn"}), 422, "query.cell")
    assert_problem(client.get("/v1/experiments", params={"verdict": "x"}), 422, "query.verdict")
    assert_problem(client.get("/v1/experiments", params={"name": "\x00"}), 400, "query.name")


def test_sweeps_list_newest_first_with_counts_and_pages(client, anonymous, api_key) -> None:
    made = []
    for i in range(3):
        body = {"name": f"s{i}", "base": BASE, "grid": {"model.cell": ["rnn", "gru"]}}
        made.append(client.post("/v1/sweeps", json=body).json()["id"])
    other = {"Authorization": f"Bearer {api_key('someone-else')}"}
    anonymous.post(
        "/v1/sweeps",
        json={"base": BASE, "grid": {"model.cell": ["rnn"]}, "seeds": [1]},
        headers=other,
    )

    page1 = client.get("/v1/sweeps", params={"limit": 2}).json()
    page2 = client.get("/v1/sweeps", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
    assert [s["id"] for s in page1["items"] + page2["items"]] == made[::-1]
    assert page2["next_cursor"] is None
    first = page1["items"][0]
    assert first["name"] == "s2" and first["status"] == "queued"
    assert first["experiments"] == 2 and first["counts"] == {"queued": 2}
    assert first["grid"] == {"model.cell": ["rnn", "gru"]} and first["seeds"] == [0]
    assert "points" not in first
    assert len(anonymous.get("/v1/sweeps", headers=other).json()["items"]) == 1
    assert_problem(client.get("/v1/sweeps", params={"cursor": "%%%"}), 400)
    assert_problem(client.get("/v1/sweeps", params={"limit": 0}), 422, "query.limit")


def test_a_sweep_whose_runs_were_deleted_still_reads(client, sessions) -> None:
    sweep = client.post("/v1/sweeps", json={"base": BASE, "grid": {"model.cell": ["rnn"]}}).json()
    with sessions() as s:
        s.execute(update(Experiment).values(status="cancelled"))
        s.commit()
    for point in sweep["points"]:
        for exp_id in point["experiments"]:
            assert client.delete(f"/v1/experiments/{exp_id}").status_code == 204
    got = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert got["experiments"] == 0 and got["points"] == [] and got["status"] == "finished"
    with sessions() as s:
        assert s.get(Sweep, sweep["id"]) is not None
