"""Fixtures: real PostgreSQL and Redis where they are reachable, and the embedded default
(SQLite + the SQLAlchemy broker). Each session gets its own PostgreSQL database; each test
gets its own queue and leaves the tables empty behind it.

Set GRADLAB_REQUIRE_SERVICES=1 (as .ci/run does) to fail instead of skip when PostgreSQL
or Redis cannot be reached."""

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from core import db, queue
from core import settings as settings_mod
from core.migrate import upgrade
from core.tables import Base

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "GRADLAB_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("GRADLAB_TEST_REDIS", "redis://127.0.0.1:6379/0")
REQUIRE = os.environ.get("GRADLAB_REQUIRE_SERVICES") == "1"


def unavailable(what: str, exc: Exception) -> None:
    if REQUIRE:
        pytest.fail(f"{what} is required (GRADLAB_REQUIRE_SERVICES=1) but unreachable: {exc}")
    pytest.skip(f"{what} unreachable: {exc}")


migrate = upgrade  # tests apply the real migrations to each database they make


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"gradlab_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    migrate(url)
    yield url
    db.get_engine.cache_clear()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'gradlab.sqlite'}"
    migrate(url)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception as exc:
        unavailable("Redis", exc)
    return REDIS_URL


@dataclass
class Backend:
    name: str  # "sqlite" (the embedded default) or "postgres" (PostgreSQL + Redis)
    database_url: str
    broker_url: str
    queue_name: str

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "BROKER_URL": self.broker_url,
            "QUEUE_NAME": self.queue_name,
        }

    def queue_depth(self) -> int:
        """Messages waiting in this backend's broker queue, read from the broker itself."""
        if self.broker_url.startswith("redis"):
            return int(redis.Redis.from_url(self.broker_url).llen(self.queue_name))
        path = self.broker_url.split("///", 1)[1]
        if not Path(path).exists():
            return 0
        with sqlite3.connect(path) as conn:
            row = conn.execute(
                "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                "WHERE q.name = ? AND m.visible",
                (self.queue_name,),
            ).fetchone()
        return int(row[0])


def make_backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    q = f"gradlab-test-{uuid.uuid4().hex[:8]}"
    if name == "sqlite":
        return Backend(
            name,
            request.getfixturevalue("sqlite_url"),
            f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
            q,
        )
    return Backend(name, request.getfixturevalue("pg_url"), request.getfixturevalue("redis_url"), q)


def clear_caches() -> None:
    from api.auth import key_cache, limiter, miss_limiter

    key_cache.clear()
    limiter.clear()
    miss_limiter.clear()
    for cached in (
        settings_mod.get_settings,
        db.get_sessionmaker,
        db.get_read_engine,
        queue.get_celery,
        queue.get_bell,
    ):
        cached.cache_clear()
    if db.get_engine.cache_info().currsize:
        db.get_engine().dispose()
    db.get_engine.cache_clear()


def empty_tables(url: str) -> None:
    engine = db.make_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


@pytest.fixture
def settings(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[settings_mod.Settings]:
    """Point the whole app (API, runner, reconciler) at `backend` for one test."""
    for key, value in backend.env().items():
        monkeypatch.setenv(key, value)
    clear_caches()
    yield settings_mod.get_settings()
    clear_caches()
    empty_tables(backend.database_url)
    if backend.broker_url.startswith("redis"):
        redis.Redis.from_url(backend.broker_url).delete(backend.queue_name)


@pytest.fixture
def api_key(settings: settings_mod.Settings) -> Callable[[str], str]:
    """Makes a real key (stored hashed, as the admin tool does) for an owner."""
    from core.keys import create_key

    def make(owner: str = "tester") -> str:
        with db.get_sessionmaker()() as s:
            return create_key(s, f"test-{owner}", owner)[1]

    return make


@pytest.fixture
def anonymous(settings: settings_mod.Settings):
    """A client with no credentials."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def client(anonymous, api_key):
    """A client with a valid key of owner `tester`."""
    anonymous.headers["Authorization"] = f"Bearer {api_key('tester')}"
    return anonymous


@pytest.fixture
def sessions(settings: settings_mod.Settings):
    return db.get_sessionmaker()


@pytest.fixture
def hooks(
    settings: settings_mod.Settings, monkeypatch: pytest.MonkeyPatch
) -> settings_mod.Settings:
    """Webhooks to loopback receivers allowed, a known secret, retries in milliseconds."""
    from tests.serving import WEBHOOK_SECRET

    for name, value in {
        "webhook_allow_private": True,
        "webhook_secret": WEBHOOK_SECRET,
        "webhook_backoff_s": 0.01,
        "webhook_backoff_max_s": 0.04,
        "webhook_max_attempts": 4,
        "webhook_timeout_s": 2.0,
    }.items():
        monkeypatch.setattr(settings, name, value)
    return settings


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """For tests of tiny tensors: a second torch thread only adds contention on a busy CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
