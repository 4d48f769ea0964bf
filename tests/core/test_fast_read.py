"""The experiment poll's async reader (core/fast_read.py) on the real PostgreSQL: the row it
reads is the row the synchronous engine reads, its connections stay within their budget, and
when it cannot answer it says so (the route then takes the threadpool) instead of failing."""

import asyncio

import pytest
from sqlalchemy import select

from core.db import get_engine
from core.fast_read import UNAVAILABLE, FastReader
from core.tables import Experiment
from tests.factories import SMALL, add_experiment


@pytest.fixture
def pg(settings):
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("the async reader is PostgreSQL's; SQLite reads take the threadpool")
    return settings


def test_sqlite_gets_no_reader(settings) -> None:
    if settings.database_url.startswith("sqlite"):
        assert asyncio.run(_none_for(settings.database_url)) is None


async def _none_for(url: str):
    return FastReader.for_url(url, 2)


def test_it_reads_the_row_the_engine_reads(pg, sessions) -> None:
    exp_id = add_experiment(sessions, SMALL)
    with get_engine().connect() as conn:
        want = conn.execute(select(Experiment.__table__).where(Experiment.id == exp_id)).first()

    async def read():
        reader = FastReader.for_url(pg.database_url, 2)
        try:
            return await reader.experiment(exp_id), await reader.experiment("no-such-id")
        finally:
            await reader.close()

    got, missing = asyncio.run(read())
    assert missing is None
    assert got._asdict() == dict(want._mapping)  # every column, same values and types


def test_connections_stay_within_the_budget(pg, sessions) -> None:
    exp_id = add_experiment(sessions, SMALL)

    async def many():
        reader = FastReader.for_url(pg.database_url, 2)
        try:
            rows = await asyncio.gather(*(reader.experiment(exp_id) for _ in range(20)))
            return rows, len(reader._open)
        finally:
            await reader.close()

    rows, opened = asyncio.run(many())
    assert all(r is not UNAVAILABLE and r.id == exp_id for r in rows)
    assert 1 <= opened <= 2


def test_a_database_it_cannot_reach_is_unavailable_not_an_error(pg) -> None:
    async def read():
        reader = FastReader.for_url("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", 2)
        return await reader.experiment("x")

    assert asyncio.run(read()) is UNAVAILABLE
