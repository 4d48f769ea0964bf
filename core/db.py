"""Engine and session factory for PostgreSQL or the embedded SQLite file."""

from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from core.settings import get_settings

POOL_TIMEOUT_S = 10.0


def make_engine(url: str) -> Engine:
    settings = get_settings()
    # As many connections as the API's threadpool has threads (40): a thread never waits on
    # the pool behind others, and a request that still cannot get one in POOL_TIMEOUT_S is a
    # 503 (api/problems.py), not a hang.
    pool = dict(
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=POOL_TIMEOUT_S,
    )
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            **(pool if ":memory:" not in url else {}),
        )

        # WAL lets the API read while the worker writes; busy_timeout rides out short locks.
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, **pool)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def get_read_engine() -> Engine:
    """The same pool without transactions: a lone read needs no BEGIN and no ROLLBACK."""
    return get_engine().execution_options(isolation_level="AUTOCOMMIT")


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)
