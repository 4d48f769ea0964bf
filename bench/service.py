"""Run the service for a benchmark: a fresh database, N real worker processes, the API
in-process. PostgreSQL + Redis when BENCH_PG and BENCH_REDIS are set, else the embedded
default (SQLite + the SQLAlchemy broker) in a temporary folder."""

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def service(n_workers: int, threads_per_worker: int = 1) -> Iterator[tuple[object, str]]:
    """Yields (an httpx-compatible client of the API, a description of the backend)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    tmp = Path(tempfile.mkdtemp(prefix="gradlab-bench-"))
    pg, rd = os.environ.get("BENCH_PG"), os.environ.get("BENCH_REDIS")
    admin = None
    if pg and rd:
        name = f"gradlab_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        db_url = make_url(pg).set(database=name).render_as_string(hide_password=False)
        broker, desc = rd, "PostgreSQL + Redis"
    else:
        db_url = f"sqlite:///{tmp}/gradlab.sqlite"
        broker, desc = f"sqla+sqlite:///{tmp}/broker.sqlite", "SQLite + SQLAlchemy broker"
    env = {
        "DATABASE_URL": db_url,
        "BROKER_URL": broker,
        "QUEUE_NAME": f"bench-{uuid.uuid4().hex[:6]}",
        "TORCH_THREADS": str(threads_per_worker),
        "OMP_NUM_THREADS": str(threads_per_worker),
        "FLUSH_EVERY_S": "2",
    }
    os.environ.update(env)
    from api import db, queue, settings

    for cached in (
        settings.get_settings,
        queue.get_celery,
        db.get_engine,
        db.get_sessionmaker,
        db.get_read_engine,
    ):
        cached.cache_clear()  # this process may have run a service before, on other URLs
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = db_url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
    workers = []
    for i in range(n_workers):
        log = open(tmp / f"worker{i}.log", "wb")  # noqa: SIM115
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "worker.celery_app",
                    "worker",
                    "--pool",
                    "solo",
                    "-Q",
                    env["QUEUE_NAME"],
                    "-n",
                    f"bench{i}@%h",
                    "--loglevel",
                    "INFO",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                cwd=ROOT,
                env={**os.environ, **env, "WORKER_NAME": f"bench{i}"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    # wait until every worker says it is ready
    deadline = time.time() + 120
    while time.time() < deadline:
        if all(b"ready." in (tmp / f"worker{i}.log").read_bytes() for i in range(n_workers)):
            break
        time.sleep(0.2)
    from fastapi.testclient import TestClient

    from api.auth import create_key
    from api.main import create_app

    with db.get_sessionmaker()() as session:
        _, key = create_key(session, "bench", "bench")
    try:
        with TestClient(create_app()) as client:
            client.headers["Authorization"] = f"Bearer {key}"
            yield client, desc
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
        db.get_engine().dispose()
        for cached in (db.get_engine, db.get_sessionmaker):
            cached.cache_clear()
        if admin is not None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def wait_sweep(client, sweep_id: str, timeout: float = 3600) -> dict:  # noqa: ANN001
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(f"/v1/sweeps/{sweep_id}").json()
        if body["status"] == "finished":
            return body
        time.sleep(0.5)
    raise TimeoutError(sweep_id)
