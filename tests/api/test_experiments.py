"""The experiment API against the real databases and brokers (both backends)."""

import pytest

from core.spec import MAX_SEQ_LEN
from tests.checks import assert_problem, pg_round_trips
from tests.conftest import Backend
from tests.factories import SMALL_SUBMIT as SMALL


def test_post_empty_spec_is_accepted_normalised_and_enqueued(client, backend: Backend) -> None:
    before = backend.queue_depth()
    # curl -d sends a form content type: the body is read as JSON whatever the type says.
    resp = client.post(
        "/v1/experiments",
        content=b"{}",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert resp.headers["location"] == f"/v1/experiments/{body['id']}"
    assert body["status"] == "queued" and body["attempt"] == 0
    spec = body["spec"]
    assert spec["task"] == {"name": "adding", "seq_len": 200}
    assert spec["model"]["activation"] == "tanh" and spec["train"]["steps"] == 2000
    assert body["progress"] == {"step": 0, "total_steps": 2000}
    assert backend.queue_depth() == before + 1
    got = client.get(body["links"]["self"]).json()
    assert got["id"] == body["id"] and got["spec"] == spec


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": {"hiden_size": 8}}, "model.hiden_size"),  # a typo is an error
        ({"task": {"seq_len": MAX_SEQ_LEN + 1}}, "task.seq_len"),
        ({"train": {"steps": 0}}, "train.steps"),
        ({"train": {"batch_size": "many"}}, "train.batch_size"),
        ({"model": {"cell": "transformer"}}, "model.cell"),
        ({"model": {"cell": "lstm", "activation": "relu"}}, "model.activation"),
        ({"task": {"name": "mnist"}}, "task"),
        ({"train": {"optimizer": {"name": "sgd", "nesterov": True}}}, "train.optimizer.nesterov"),
    ],
)
def test_invalid_specs_are_422_naming_the_field(client, body: dict, field: str) -> None:
    assert_problem(client.post("/v1/experiments", json=body), 422, field)


def test_malformed_and_non_object_bodies(client) -> None:
    assert_problem(client.post("/v1/experiments", content=b"{not json"), 400)
    assert_problem(client.post("/v1/experiments", content=b"[1, 2]"), 422)
    assert_problem(client.post("/v1/experiments", content=b"\xff\xfe"), 400)
    assert_problem(client.post("/v1/experiments", content=b"x" * 70_000), 413)


def test_over_the_compute_budget_is_422_with_estimate_and_limit(client) -> None:
    spec = {
        "task": {"seq_len": 5000},
        "train": {"steps": 100_000, "batch_size": 1024},
        "model": {"hidden_size": 1024, "num_layers": 8, "cell": "lstm"},
    }
    body = assert_problem(client.post("/v1/experiments", json=spec), 422, "train.steps")
    assert body["estimate"] > body["limit"]


def test_unknown_ids_and_paths_are_404_problems(client) -> None:
    for path in [
        "/v1/experiments/nope",
        "/v1/experiments/" + "x" * 300,
        "/v1/experiments/00000000-0000-0000-0000-000000000000/metrics",
        "/v1/experiments/00000000-0000-0000-0000-000000000000/events",
        "/v1/nothing",
    ]:
        assert_problem(client.get(path), 404)
    assert_problem(client.post("/v1/experiments/nope/cancel"), 404)


def test_idempotency_key_replays_and_conflicts(client, backend: Backend) -> None:
    h = {"Idempotency-Key": "abc-123"}
    first = client.post("/v1/experiments", json=SMALL, headers=h)
    again = client.post("/v1/experiments", json=SMALL, headers=h)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert backend.queue_depth() == 1
    assert_problem(client.post("/v1/experiments", json={**SMALL, "seed": 1}, headers=h), 409)


def test_a_lost_race_on_the_same_idempotency_key_is_a_replay(
    client, backend: Backend, monkeypatch
) -> None:
    """Two requests with one key both miss the lookup; the database's unique index lets one
    in, and the other answers as a replay (same body) or a 409 (another body)."""
    from api.routes import experiments

    h = {"Idempotency-Key": "raced"}
    first = client.post("/v1/experiments", json=SMALL, headers=h)
    lookups = []

    def missed_once(conn, owner, key):
        lookups.append(key)
        return None if len(lookups) == 1 else real(conn, owner, key)

    real = experiments._by_key
    monkeypatch.setattr(experiments, "_by_key", missed_once)
    again = client.post("/v1/experiments", json=SMALL, headers=h)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert lookups == ["raced", "raced"]  # the pre-check, then the lookup after the conflict
    lookups.clear()
    assert_problem(client.post("/v1/experiments", json={**SMALL, "seed": 1}, headers=h), 409)
    assert backend.queue_depth() == 1


def test_on_postgresql_a_post_is_one_round_trip_and_a_keyed_one_two(
    client, backend: Backend
) -> None:
    """The insert under the cap is one pipeline (core.pipeline); a key adds its lookup, and a
    replay is that lookup alone. Counted from libpq's trace of every pooled connection."""
    if backend.name != "postgres":
        pytest.skip("the pipeline is PostgreSQL's")
    from core.db import get_engine

    assert client.post("/v1/experiments", json=SMALL).status_code == 202  # key cached, pool warm
    with pg_round_trips(get_engine()) as plain:
        assert client.post("/v1/experiments", json=SMALL).status_code == 202
    h = {"Idempotency-Key": "once"}
    with pg_round_trips(get_engine()) as keyed:
        first = client.post("/v1/experiments", json=SMALL, headers=h)
    with pg_round_trips(get_engine()) as replayed:
        again = client.post("/v1/experiments", json=SMALL, headers=h)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert (plain.n, keyed.n, replayed.n) == (1, 2, 1), plain.log + keyed.log + replayed.log
    assert backend.queue_depth() == 3


def test_near_the_cap_posts_count_alone_and_over_it_nothing_is_written(
    client, backend: Backend, settings, monkeypatch
) -> None:
    """A cap above the slots: the first SLOTS - 1 go the one-trip way, the rest to the cap
    count alone, and the one past it is a 429 that stores and enqueues nothing."""
    from sqlalchemy import func, select

    from core.db import get_engine
    from core.lifecycle import SLOTS
    from core.tables import Experiment

    cap = SLOTS + 2
    monkeypatch.setattr(settings, "max_active_per_owner", cap)
    codes = [client.post("/v1/experiments", json=SMALL).status_code for _ in range(cap)]
    assert codes == [202] * cap
    body = assert_problem(client.post("/v1/experiments", json=SMALL), 429)
    assert body["active"] == cap and body["cap"] == cap
    keyed = client.post("/v1/experiments", json=SMALL, headers={"Idempotency-Key": "late"})
    assert_problem(keyed, 429)
    with get_engine().connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Experiment)) == cap
    assert backend.queue_depth() == cap


def test_an_idempotency_key_over_200_characters_is_422_naming_it(client, backend) -> None:
    resp = client.post("/v1/experiments", json=SMALL, headers={"Idempotency-Key": "k" * 201})
    body = assert_problem(resp, 422)
    assert [e["field"] for e in body["errors"]] == ["Idempotency-Key"]
    assert backend.queue_depth() == 0
    ok = client.post("/v1/experiments", json=SMALL, headers={"Idempotency-Key": "k" * 200})
    assert ok.status_code == 202


def test_list_is_newest_first_filtered_and_paginated(client) -> None:
    ids = [
        client.post("/v1/experiments", json={**SMALL, "tags": ["a" if i % 2 else "b"]}).json()["id"]
        for i in range(5)
    ]
    page1 = client.get("/v1/experiments", params={"limit": 2}).json()
    page2 = client.get(
        "/v1/experiments", params={"limit": 2, "cursor": page1["next_cursor"]}
    ).json()
    page3 = client.get(
        "/v1/experiments", params={"limit": 2, "cursor": page2["next_cursor"]}
    ).json()
    seen = [e["id"] for p in (page1, page2, page3) for e in p["items"]]
    assert seen == ids[::-1] and page3["next_cursor"] is None
    tagged = client.get("/v1/experiments", params={"tag": "a"}).json()["items"]
    assert [e["id"] for e in tagged] == [ids[3], ids[1]]
    assert client.get("/v1/experiments", params={"status": "running"}).json()["items"] == []
    assert_problem(client.get("/v1/experiments", params={"status": "bogus"}), 422, "query.status")
    assert_problem(client.get("/v1/experiments", params={"cursor": "%%%"}), 400)
    assert_problem(client.get("/v1/experiments", params={"limit": 0}), 422, "query.limit")


def test_cancel_queued_then_finished_is_409(client) -> None:
    exp = client.post("/v1/experiments", json=SMALL).json()
    resp = client.post(f"/v1/experiments/{exp['id']}/cancel")
    assert resp.status_code == 202 and resp.json()["status"] == "cancelled"
    assert_problem(client.post(f"/v1/experiments/{exp['id']}/cancel"), 409)


def test_health_and_readiness(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
