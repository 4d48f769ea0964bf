"""schemathesis against the served OpenAPI document, on PostgreSQL + Redis: whatever a client
sends, no 5xx, and every response matches its documented status, content type and schema."""

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app

# The app reads its settings per request, so the `client` fixture below points it at the test
# database and broker before any case runs.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


@pytest.fixture
def keyed(client, settings, monkeypatch) -> dict[str, str]:
    monkeypatch.setattr(settings, "rate_limit_per_s", 1e6)  # fuzzing is not a flood
    monkeypatch.setattr(settings, "rate_limit_burst", 1e6)
    return {"Authorization": client.headers["Authorization"]}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@schema.parametrize()
@hsettings(
    max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
def test_no_5xx_and_every_response_matches_its_schema(case, keyed) -> None:
    case.call_and_validate(
        headers=keyed,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
