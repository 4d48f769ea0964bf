"""GET /v1/experiments/{id} on PostgreSQL reads through the event loop's async reader
(core/fast_read.py), owner checks included; where it cannot answer, the threadpool does."""

import pytest

from core.fast_read import UNAVAILABLE, FastReader
from tests.factories import SMALL, add_experiment


@pytest.fixture
def pg(settings):
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("the async reader is PostgreSQL's; SQLite reads take the threadpool")
    return settings


def test_the_route_reads_through_it_on_postgresql(pg, client, sessions, monkeypatch) -> None:
    exp_id = add_experiment(sessions, SMALL)
    other = add_experiment(sessions, SMALL, owner="someone-else")
    calls: list[str] = []
    real = FastReader.experiment

    async def spy(self, experiment_id):
        calls.append(experiment_id)
        return await real(self, experiment_id)

    monkeypatch.setattr(FastReader, "experiment", spy)
    got = client.get(f"/v1/experiments/{exp_id}")
    assert got.status_code == 200 and got.json()["id"] == exp_id
    assert client.get(f"/v1/experiments/{other}").status_code == 404  # another owner's
    assert calls == [exp_id, other]


def test_when_it_cannot_answer_the_threadpool_does(pg, client, sessions, monkeypatch) -> None:
    exp_id = add_experiment(sessions, SMALL)

    async def unavailable(self, experiment_id):
        return UNAVAILABLE

    monkeypatch.setattr(FastReader, "experiment", unavailable)
    got = client.get(f"/v1/experiments/{exp_id}")
    assert got.status_code == 200 and got.json()["id"] == exp_id
