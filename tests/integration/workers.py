"""Real worker processes for the integration tests."""

import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ROOT, Backend
from worker.embedded import worker_command

FAST_RELIABILITY = {
    "HEARTBEAT_INTERVAL_S": "0.5",
    "STALE_AFTER_S": "3",
    "RECONCILE_INTERVAL_S": "1",
    "REQUEUE_AFTER_S": "60",
    "FLUSH_EVERY_S": "0.2",
    "OMP_NUM_THREADS": "1",
}


def start_worker(backend: Backend, log_dir: Path, **env: str) -> subprocess.Popen:
    name = f"w{uuid.uuid4().hex[:6]}"
    full_env = {**os.environ, **backend.env(), **FAST_RELIABILITY, **env, "WORKER_NAME": name}
    log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        worker_command(backend.queue_name, name),
        cwd=ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
