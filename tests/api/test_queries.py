"""Queries that would do nothing are refused; the list filters do what they say."""

import ast
import re
from pathlib import Path

from api.query import _api_routes
from core.tables import EVENT_KINDS
from tests.checks import assert_problem
from tests.factories import SMALL_SUBMIT

ROOT = Path(__file__).resolve().parents[2]


def test_an_unknown_parameter_is_a_422_with_a_did_you_mean(client) -> None:
    body = assert_problem(client.get("/v1/experiments?statu=queued"), 422, "query.statu")
    assert "did you mean 'status'" in body["errors"][0]["message"]


def test_a_single_valued_parameter_given_twice_is_a_422(client) -> None:
    assert_problem(client.get("/v1/experiments?limit=1&limit=2"), 422, "query.limit")


def test_every_v1_get_route_refuses_an_unknown_parameter(client) -> None:
    routes = [
        r
        for r in _api_routes(client.app.router.routes)
        if r.path.startswith("/v1") and "GET" in r.methods
    ]
    assert len(routes) >= 10
    for route in routes:
        path = re.sub(r"\{(\w+)\}", lambda m: "png" if m[1] == "fmt" else "x", route.path)
        assert_problem(client.get(path, params={"no_such_thing": "1"}), 422, "query.no_such_thing")


def test_status_takes_several_values_and_name_filters(client) -> None:
    ids = {}
    for name in ("Alpha run", "beta 100%", "gamma"):
        ids[name] = client.post("/v1/experiments", json={**SMALL_SUBMIT, "name": name}).json()["id"]
    client.post(f"/v1/experiments/{ids['gamma']}/cancel")
    both = client.get("/v1/experiments", params=[("status", "queued"), ("status", "cancelled")])
    assert {e["id"] for e in both.json()["items"]} == set(ids.values())
    queued = client.get("/v1/experiments", params={"status": "queued"}).json()["items"]
    assert {e["name"] for e in queued} == {"Alpha run", "beta 100%"}
    assert [e["name"] for e in client.get("/v1/experiments?name=ALPHA").json()["items"]] == [
        "Alpha run"
    ]
    # % is a literal character, not a wildcard
    assert [e["name"] for e in client.get("/v1/experiments?name=0%25").json()["items"]] == [
        "beta 100%"
    ]
    assert_problem(client.get("/v1/experiments?status=bogus"), 422, "query.status")


def test_events_kind_is_one_of_the_kinds(client) -> None:
    exp_id = client.post("/v1/experiments", json=SMALL_SUBMIT).json()["id"]
    assert_problem(client.get(f"/v1/experiments/{exp_id}/events?kind=bogus"), 422, "query.kind")
    assert client.get(f"/v1/experiments/{exp_id}/events?kind=nonfinite").json() == {"items": []}


def test_every_event_kind_written_is_a_known_kind() -> None:
    """The kinds the worker and core write, read from the source: each is in EVENT_KINDS."""
    written = set()
    for path in [*(ROOT / "worker").rglob("*.py"), *(ROOT / "core").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "event"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                written.add(node.args[1].value)
            if isinstance(func, ast.Name) and func.id == "Event":  # an Event row built directly
                for kw in node.keywords:
                    if kw.arg == "kind":  # a literal, or a choice between literals
                        values = (
                            [kw.value.body, kw.value.orelse]
                            if isinstance(kw.value, ast.IfExp)
                            else [kw.value]
                        )
                        written |= {v.value for v in values if isinstance(v, ast.Constant)}
    assert {"nonfinite", "halt", "worker_lost", "client_lost"} <= written
    assert written <= set(EVENT_KINDS)
