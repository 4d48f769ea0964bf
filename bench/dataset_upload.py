"""A 200 MB dataset uploaded to a real API process (uvicorn on loopback) and read by a worker
with an empty cache: the API process's peak memory growth during the upload (VmHWM reset
before it, on Linux) against the chunk size, and the times.

The warm-up before it is a tiny upload (the route, the first imports, the connection), never
a large one: memory a large upload grew and freed is kept by the allocator and reused, so
the next upload measures little whatever the code holds (the code before the streamed form
grew 4.0 MiB on PostgreSQL as the first large upload, 0.3 MiB after a 4 MB one).

    .venv/bin/python bench/dataset_upload.py [--mb 200]
    BENCH_PG=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python bench/dataset_upload.py
"""

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from service import ROOT, fresh_database, use_environment


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def file_backed_kb(pid: int) -> int:
    """The RSS of memory-mapped files (SQLite's WAL index)."""
    return rss_kb(pid, "RssFile") + rss_kb(pid, "RssShmem")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_file(path: Path, mb: int) -> None:
    """x (N, 256, 32) float32 of about `mb` MB, y (N,) over 10 classes."""
    n = mb * 1024 * 1024 // (256 * 32 * 4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 256, 32), dtype=np.float32)
    np.savez(path, x=x, y=np.arange(n) % 10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    args = ap.parse_args()
    import httpx

    from core.keys import create_key
    from core.settings import get_settings
    from gradlab.client import Client

    with (
        tempfile.TemporaryDirectory() as tmp,
        fresh_database(os.environ.get("BENCH_PG"), Path(tmp)) as url,
    ):
        folder = Path(tmp)
        data = folder / "data.npz"
        make_file(data, args.mb)
        size = data.stat().st_size
        env = {
            "DATABASE_URL": url,
            "DATASET_CACHE_DIR": str(folder / "cache"),
            "MAX_DATASET_BYTES": str(size + 1024),
            "LOG_FORMAT": "text",
        }
        use_environment(env)
        from core import db

        with db.get_sessionmaker()() as s:
            key = create_key(s, "bench", "bench")[1]
        port = free_port()
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.main:app",
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env={**os.environ, **env, "TMPDIR": tmp},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    httpx.get(f"{base}/healthz")
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            chunk = get_settings().dataset_chunk_bytes
            with Client(base, key) as gl:
                # warm: the route, the first imports (numpy), the connection
                small = folder / "small.npz"
                np.savez(small, x=np.zeros((4, 3, 2), np.float32), y=np.arange(4) % 2)
                gl.delete_dataset(gl.upload_dataset(small)["id"])
                before, mapped = rss_kb(api.pid, "VmRSS"), file_backed_kb(api.pid)
                Path(f"/proc/{api.pid}/clear_refs").write_text("5")  # reset the peak
                t0 = time.perf_counter()
                d = gl.upload_dataset(data, name="bench")
                upload_s = time.perf_counter() - t0
                peak = rss_kb(api.pid, "VmHWM")
                mapped = file_backed_kb(api.pid) - mapped
            print(
                f"file: {size / 1e6:.1f} MB, x {d['shapes']['x']}, sha256 {d['sha256'][:12]}...; "
                f"database {'PostgreSQL' if url.startswith('postgresql') else 'SQLite'}; "
                f"chunk {chunk / 2**20:.0f} MiB"
            )
            print(f"upload (validate + store): {upload_s:.2f} s, {size / 1e6 / upload_s:.0f} MB/s")
            print(
                f"API process memory: RSS before {before / 1024:.1f} MiB, peak during upload "
                f"{peak / 1024:.1f} MiB, growth {(peak - before) / 1024:.2f} MiB "
                f"({(peak - before) * 1024 / chunk:.2f} chunk sizes; memory-mapped files "
                f"{mapped / 1024:+.2f} MiB of it at the end)"
            )
            from worker.datasets.uploaded import cached_file

            t0 = time.perf_counter()
            path, _ = cached_file(d["id"], "bench", get_settings())
            read_s = time.perf_counter() - t0
            same = hashlib.sha256(path.read_bytes()).hexdigest() == d["sha256"]
            print(
                f"worker with an empty cache: read {size / 1e6:.1f} MB from the database in "
                f"{read_s:.2f} s ({size / 1e6 / read_s:.0f} MB/s); bytes identical: {same}"
            )
            t0 = time.perf_counter()
            cached_file(d["id"], "bench", get_settings())
            print(f"second read (cache hit): {(time.perf_counter() - t0) * 1000:.1f} ms")
        finally:
            api.terminate()
            api.wait()


if __name__ == "__main__":
    main()
