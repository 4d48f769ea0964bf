"""Keys and owners, rate limits, the active cap, Idempotency-Key expiry."""

import re

import pytest
from sqlalchemy import select

from api.admin import main as admin
from core.tables import ApiKey
from tests.checks import assert_problem
from tests.factories import SMALL_SUBMIT as SMALL


def v1_routes(app) -> list[tuple[str, str]]:
    """Every /v1 operation the app documents, its path parameters filled in."""
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, ops in app.openapi()["paths"].items()
        if path.startswith("/v1")
        for method in ops
    ]


def test_every_v1_route_needs_a_key(anonymous) -> None:
    routes = v1_routes(anonymous.app)
    assert len(routes) >= 10
    for method, path in routes:
        resp = anonymous.request(method, path)
        body = assert_problem(resp, 401)
        assert resp.headers["www-authenticate"].startswith("Bearer"), (method, path, body)
    assert anonymous.get("/healthz").status_code == 200
    bad = anonymous.get("/v1/experiments", headers={"Authorization": "Bearer glk_nope"})
    assert_problem(bad, 401)
    assert_problem(anonymous.get("/v1/experiments", headers={"Authorization": "Basic x"}), 401)


def test_another_owners_resources_are_404(client, api_key) -> None:
    exp = client.post("/v1/experiments", json=SMALL).json()["id"]
    sweep = client.post("/v1/sweeps", json={"base": SMALL, "seeds": [1]}).json()["id"]
    other = {"Authorization": f"Bearer {api_key('intruder')}"}
    for path in ["", "/metrics", "/gradients", "/events"]:
        assert_problem(client.get(f"/v1/experiments/{exp}{path}", headers=other), 404)
    assert_problem(client.post(f"/v1/experiments/{exp}/cancel", headers=other), 404)
    assert_problem(client.get(f"/v1/sweeps/{sweep}", headers=other), 404)
    assert_problem(client.post(f"/v1/sweeps/{sweep}/cancel", headers=other), 404)
    assert client.get("/v1/experiments", headers=other).json()["items"] == []
    assert len(client.get("/v1/experiments").json()["items"]) == 2
    # the same Idempotency-Key of another owner is another request
    h = {"Idempotency-Key": "k"}
    mine = client.post("/v1/experiments", json=SMALL, headers=h).json()["id"]
    theirs = client.post("/v1/experiments", json=SMALL, headers={**h, **other}).json()["id"]
    assert mine != theirs


def test_admin_tool_keys_are_hashed_and_revocable(
    anonymous, sessions, capsys, settings, monkeypatch
) -> None:
    monkeypatch.setattr(settings, "auth_cache_s", 0.0)  # see the cache test below
    assert admin(["create", "--name", "ci", "--owner", "team-a"]) == 0
    key = re.search(r"API key: (\S+)", capsys.readouterr().out).group(1)
    with sessions() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.owner == "team-a"))
        stored = [str(getattr(row, c.key)) for c in ApiKey.__table__.columns]
    assert not any(key in value for value in stored)  # never in clear
    auth = {"Authorization": f"Bearer {key}"}
    assert anonymous.get("/v1/experiments", headers=auth).status_code == 200
    assert admin(["list"]) == 0
    assert "team-a" in capsys.readouterr().out
    assert admin(["revoke", row.prefix]) == 0
    assert_problem(anonymous.get("/v1/experiments", headers=auth), 401)
    assert admin(["revoke", "glk_nothing"]) == 1


def test_rate_limit_is_429_with_retry_after(client, settings, monkeypatch) -> None:
    monkeypatch.setattr(settings, "rate_limit_per_s", 0.5)
    monkeypatch.setattr(settings, "rate_limit_burst", 3.0)
    codes = [client.get("/v1/experiments").status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    resp = client.get("/v1/experiments")
    assert_problem(resp, 429)
    assert int(resp.headers["retry-after"]) >= 1


def test_active_cap_is_429(client, settings, monkeypatch) -> None:
    monkeypatch.setattr(settings, "max_active_per_owner", 2)
    assert [client.post("/v1/experiments", json=SMALL).status_code for _ in range(2)] == [202, 202]
    resp = client.post("/v1/experiments", json=SMALL)
    body = assert_problem(resp, 429)
    assert body["active"] == 2 and body["cap"] == 2 and resp.headers["retry-after"]
    sweep = client.post("/v1/sweeps", json={"base": SMALL, "seeds": [1, 2]})
    assert_problem(sweep, 429)


@pytest.mark.parametrize("ttl", [3600.0, 1e-6])
def test_idempotency_key_expires(client, settings, monkeypatch, ttl: float) -> None:
    monkeypatch.setattr(settings, "idempotency_ttl_s", ttl)
    h = {"Idempotency-Key": "expiring"}
    first = client.post("/v1/experiments", json=SMALL, headers=h).json()["id"]
    again = client.post("/v1/experiments", json=SMALL, headers=h).json()["id"]
    assert (first == again) == (ttl > 1)


def test_a_revoked_key_works_until_its_cache_entry_expires(
    client, sessions, settings, monkeypatch
) -> None:
    from api.auth import key_cache

    monkeypatch.setattr(settings, "auth_cache_s", 3600.0)
    assert client.get("/v1/experiments").status_code == 200  # cached now
    with sessions() as s:
        (row,) = s.scalars(select(ApiKey)).all()
    assert admin(["revoke", row.id]) == 0
    assert client.get("/v1/experiments").status_code == 200  # within auth_cache_s
    key_cache.clear()  # what the expiry does
    assert_problem(client.get("/v1/experiments"), 401)
