"""`make run`: migrations, one worker and the API in one command, on whatever DATABASE_URL and
BROKER_URL say (by default a SQLite file and the SQLAlchemy broker: no server to install)."""

import os
import signal
import subprocess
import sys
import time

from core.migrate import upgrade
from core.settings import get_settings


def local_key() -> str:
    """The embedded default's own key: made on first start, kept in data/api_key (mode 0600)
    so every start can print it."""
    from pathlib import Path

    from core.db import get_sessionmaker
    from core.keyfile import write_private
    from core.keys import create_key, hash_key
    from core.settings import DATA_DIR
    from core.tables import ApiKey

    path = Path(os.environ.get("API_KEY_FILE", DATA_DIR / "api_key"))
    with get_sessionmaker()() as s:
        if path.exists():
            key = path.read_text().strip()
            row = s.query(ApiKey).filter_by(key_hash=hash_key(key)).one_or_none()
            if row is not None and row.revoked_at is None:
                return key
        _, key = create_key(s, "embedded", "local")
    write_private(path, key, replace=True)
    return key


def worker_command(queue: str, name: str | None = None, loglevel: str = "INFO") -> list[str]:
    """A solo worker: one experiment at a time, no forked CUDA contexts."""
    cmd = [
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
        loglevel,
        "-Q",
        queue,
    ]
    if name is not None:  # a lone worker needs none of the cluster chatter
        cmd += ["-n", f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    return cmd


def start_worker(queue: str) -> subprocess.Popen:
    return subprocess.Popen(worker_command(queue))


def where_to_go(port: int, key_file: str) -> str:
    """What `make run` prints once the API answers: the UI, the docs, the CLI, the key's file
    (never the key: a terminal is often a log)."""
    url = f"http://127.0.0.1:{port}"
    return "\n".join(
        [
            f"gradlab is running on {url}  (Ctrl-C stops)",
            f"  web UI    {url}/   sign in with the key in {key_file}",
            f"  API docs  {url}/docs",
            f"  CLI       .venv/bin/gradlab --help   (reads {key_file} from this folder)",
            f'  curl      curl -H "Authorization: Bearer $(cat {key_file})" {url}/v1/experiments',
        ]
    )


def wait_until_up(port: int, api: subprocess.Popen, timeout_s: float = 60) -> bool:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and api.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


def start_api(port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:app",
            "--host",
            os.environ.get("HOST", "127.0.0.1"),
            "--port",
            str(port),
            # The service writes its own JSON request log (path, never the query string).
            "--no-access-log",
        ]
    )


def main() -> int:
    settings = get_settings()
    upgrade()
    local_key()
    key_file = os.environ.get("API_KEY_FILE", "data/api_key")
    worker = start_worker(settings.queue_name)
    api = start_api(settings.port)
    if wait_until_up(settings.port, api):
        print(where_to_go(settings.port, key_file), flush=True)
    stopping = False

    def stop(*_args: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in (api, worker):
            if proc.poll() is None:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            if worker.poll() is not None:
                # A worker that died (killed, or past a hard time limit) is started again; the
                # reconciler in the new one picks up what the old one left.
                print(f"gradlab: worker exited ({worker.returncode}); restarting", flush=True)
                time.sleep(1)
                worker = start_worker(settings.queue_name)
            if api.poll() is not None and not stopping:
                # An API that died (killed for memory, say) is started again the same way: the
                # database holds everything, so nothing is lost but the requests in flight.
                print(f"gradlab: API exited ({api.returncode}); restarting", flush=True)
                time.sleep(1)
                api = start_api(settings.port)
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
