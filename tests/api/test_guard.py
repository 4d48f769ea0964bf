"""Whatever a tenant with a valid key sends, a 4xx problem naming the field, checked before
anything is stored (README, "Security and reliability"): NUL bytes, NaN and Infinity, deep
nesting, sizes, headers; a 500 carries its request id; unknown keys are rate-limited."""

import asyncio
import base64
import json
import secrets

import pytest

from api.guard import RequestGuard
from tests.checks import assert_problem, at_once
from tests.factories import SMALL, SMALL_SUBMIT, add_experiment


def stored(client) -> tuple[int, int]:
    exps = client.get("/v1/experiments", params={"limit": 200})
    assert exps.status_code == 200
    return len(exps.json()["items"]), 0


def test_nul_bytes_are_refused_everywhere(client, sessions) -> None:
    exp_id = add_experiment(sessions, SMALL)
    body = assert_problem(client.post("/v1/experiments", json={"name": "a\x00b"}), 422, "name")
    assert "NUL" in body["detail"]
    assert_problem(client.post("/v1/sweeps", json={"name": "\x00", "base": {}}), 422, "name")
    assert_problem(client.post("/v1/sweeps", json={"grid": {"model.cell\x00": ["rnn"]}}), 422)
    for path, field in [
        ("/v1/experiments/%00", "path"),
        (f"/v1/experiments/{exp_id}%00/metrics", "path"),
        ("/v1/sweeps/%00", "path"),
        ("/v1/experiments?sweep_id=%00", "query.sweep_id"),
        (f"/v1/experiments/{exp_id}/events?kind=a%00", "query.kind"),
        ("/v1/plots/overlay.png?ids=%00", "query.ids"),
        (f"/v1/experiments/{exp_id}/export.csv?prefix=%00", "query.prefix"),
        (f"/v1/experiments/{exp_id}/export/tensorboard?prefix=x%00", "query.prefix"),
    ]:
        assert_problem(client.get(path), 400, field)
    assert_problem(client.post("/v1/experiments/%00/cancel"), 400, "path")
    # a cursor is decoded by the route: one carrying a NUL is refused there
    forged = base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|x\x00").decode()
    assert_problem(client.get("/v1/experiments", params={"cursor": forged}), 400, "cursor")
    assert stored(client)[0] == 1


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_are_malformed_json(client, literal) -> None:
    sweep = '{"base": {"task": {"seq_len": 10}}, "grid": {"train.clip.max_norm": [%s]}}'
    assert_problem(client.post("/v1/sweeps", content=sweep % literal), 400)
    assert_problem(client.post("/v1/experiments", content=f'{{"seed": {literal}}}'), 400)
    assert stored(client)[0] == 0


def test_deep_nesting_is_refused_before_it_is_stored(client) -> None:
    label: object = "x"
    for _ in range(300):
        label = [label]
    sweep = {"base": SMALL_SUBMIT, "grid": {"variant": [{"label": "a", "x": label}]}}
    body = assert_problem(client.post("/v1/sweeps", json=sweep), 422)
    assert "deeper" in body["detail"]
    deep: dict = {}
    node = deep
    for _ in range(200):
        node["model"] = {}
        node = node["model"]
    assert_problem(client.post("/v1/sweeps", json={"base": deep}), 422)
    assert_problem(client.post("/v1/experiments", json=deep), 422)
    # nothing stored, and the owner's pages still answer
    assert stored(client)[0] == 0


def test_sweep_sizes_and_labels(client) -> None:
    big = {"label": "x" * (1 << 20)}
    assert_problem(client.post("/v1/sweeps", json={"grid": {"variant": [big]}}), 413)
    long_label = {"grid": {"variant": [{"label": "x" * 300}]}, "base": SMALL_SUBMIT}
    assert_problem(client.post("/v1/sweeps", json=long_label), 422, "grid.variant")
    number_label = {"grid": {"variant": [{"label": 7}]}, "base": SMALL_SUBMIT}
    assert_problem(client.post("/v1/sweeps", json=number_label), 422, "grid.variant")
    seed = {"base": SMALL_SUBMIT, "grid": {"seed": [1, 2, 3]}}
    body = assert_problem(client.post("/v1/sweeps", json=seed), 422, "grid.seed")
    assert "seeds" in body["detail"]
    assert stored(client)[0] == 0


def test_headers_over_the_limit_are_431(client) -> None:
    resp = client.get("/v1/experiments", headers={"X-Padding": "a" * 40_000})
    assert_problem(resp, 431)
    assert client.get("/healthz", headers={"X-Padding": "a" * 40_000}).status_code == 431


def run_guard(headers: list[tuple[bytes, bytes]], chunks: int, chunk: bytes) -> tuple[int, int]:
    """The guard in front of an app that reads the whole body: (status sent, chunks pulled)."""
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < chunks}

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope, receive, send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": headers}
    scope["query_string"] = b""
    asyncio.run(RequestGuard(app)(scope, receive, send))
    return sent[0]["status"], pulled


def test_a_large_body_is_refused_without_reading_it(settings) -> None:
    chunk = b"x" * 65536
    # announced: refused on Content-Length, nothing read
    assert run_guard([(b"content-length", b"104857600")], 1600, chunk) == (413, 0)
    # not announced (chunked): reading stops at the limit, not at the end of 100 MB
    status, pulled = run_guard([], 1600, chunk)
    assert status == 413 and pulled <= settings.max_body_bytes // len(chunk) + 1
    assert run_guard([], 1, b"{}") == (200, 1)


def test_a_500_carries_its_request_id(client, sessions, monkeypatch) -> None:
    from api.routes import experiments

    exp_id = add_experiment(sessions, SMALL)

    def broken(row):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(experiments, "experiment_view", broken)
    resp = client.get(f"/v1/experiments/{exp_id}", headers={"X-Request-ID": "trace-me-500"})
    assert_problem(resp, 500)
    assert resp.headers["x-request-id"] == "trace-me-500"


def test_unknown_keys_are_rate_limited_per_address(
    anonymous, api_key, settings, monkeypatch
) -> None:
    # A slow refill: at the default 5 a second a loaded machine refills a token between the
    # requests below, and the last one would be a 401 again.
    monkeypatch.setattr(settings, "auth_miss_rate_per_s", 0.01)
    good = {"Authorization": f"Bearer {api_key('tester')}"}
    assert anonymous.get("/v1/experiments", headers=good).status_code == 200  # now cached
    codes = [
        anonymous.get(
            "/v1/experiments", headers={"Authorization": f"Bearer {secrets.token_hex(8)}"}
        ).status_code
        for _ in range(int(settings.auth_miss_burst) + 10)
    ]
    assert codes.count(401) >= settings.auth_miss_burst - 1 and 429 in codes
    assert codes[-1] == 429
    # a key already known keeps working from that address
    assert anonymous.get("/v1/experiments", headers=good).status_code == 200


def test_metrics_key_when_set(anonymous, settings, monkeypatch) -> None:
    assert anonymous.get("/metrics").status_code == 200
    monkeypatch.setattr(settings, "metrics_key", "m" * 20)
    assert_problem(anonymous.get("/metrics"), 401)
    ok = anonymous.get("/metrics", headers={"Authorization": "Bearer " + "m" * 20})
    assert ok.status_code == 200 and "gradlab_experiments" in ok.text


def test_concurrent_sweeps_never_pass_the_active_cap(client, settings, monkeypatch) -> None:
    """Five sweeps of 20 at once against a cap of 50: two are accepted, three are 429, and
    never more than 50 active; then 20 single POSTs at once against what is left."""
    monkeypatch.setattr(settings, "max_active_per_owner", 50)
    monkeypatch.setattr(settings, "rate_limit_burst", 1000)
    sweep = {"base": SMALL_SUBMIT, "grid": {"train.steps": list(range(1, 21))}}
    codes = at_once(lambda: client.post("/v1/sweeps", json=sweep).status_code, 5)
    assert sorted(codes) == [202, 202, 429, 429, 429]
    assert stored(client)[0] == 40
    singles = at_once(lambda: client.post("/v1/experiments", json=SMALL_SUBMIT).status_code, 20)
    assert singles.count(202) == 10 and singles.count(429) == 10
    assert stored(client)[0] == 50
    assert json.loads(client.get("/v1/experiments?limit=1").text)["items"]
