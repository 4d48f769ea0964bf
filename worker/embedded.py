"""`make run`: migrations, one worker and the API in one command, on whatever DATABASE_URL and
BROKER_URL say (by default a SQLite file and the SQLAlchemy broker: no server to install)."""

import os
import signal
import subprocess
import sys
import time

from alembic import command
from alembic.config import Config

from api.settings import get_settings


def migrate() -> None:
    command.upgrade(Config("alembic.ini"), "head")


def main() -> int:
    settings = get_settings()
    migrate()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "-Q",
            settings.queue_name,
        ],
    )
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:app",
            "--host",
            os.environ.get("HOST", "127.0.0.1"),
            "--port",
            str(settings.port),
        ],
    )
    print(f"gradlab: API on http://127.0.0.1:{settings.port}  (Ctrl-C stops)", flush=True)

    def stop(*_args: object) -> None:
        for proc in (api, worker):
            if proc.poll() is None:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        while api.poll() is None and worker.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        for proc in (api, worker):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0 if api.returncode in (0, -15, None) else 1


if __name__ == "__main__":
    sys.exit(main())
