"""Every knob of the service, read once from the environment."""

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR = Path("data")


def physical_memory() -> int:
    """This machine's memory in bytes (0 where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def default_worker_memory() -> int:
    """Half of this machine's memory (8 GiB where it cannot be read): set MAX_WORKER_MEMORY to
    the worker machine's when the API runs elsewhere."""
    return physical_memory() // 2 or 8 * 2**30


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    # Embedded default: a SQLite file and the SQLAlchemy broker, no server to install.
    database_url: str = f"sqlite:///{DATA_DIR}/gradlab.sqlite"
    broker_url: str = f"sqla+sqlite:///{DATA_DIR}/broker.sqlite"
    port: int = 8000
    queue_name: str = "gradlab"

    # Reliability: the database is the source of truth, the broker only rings the bell.
    heartbeat_interval_s: float = Field(5.0, gt=0)
    cancel_poll_s: float = Field(0.5, gt=0, description="how often a run looks for a cancel")
    stale_after_s: float = Field(60.0, gt=0, description="running with no heartbeat this long")
    requeue_after_s: float = Field(120.0, gt=0, description="queued this long: send again")
    reconcile_interval_s: float = Field(15.0, gt=0)
    max_attempts: int = Field(3, ge=1)

    # Training-side flushing: progress shows while a run goes, a crash loses one batch.
    flush_every_steps: int = Field(200, ge=1)
    flush_every_s: float = Field(2.0, gt=0)

    # Budgets of one spec (core/spec.py: estimated_cost, estimated_memory,
    # estimated_trace_bytes): over any of them a submit is a 422 that states the estimate.
    max_cost: float = Field(5e13, gt=0)
    max_worker_memory: int = Field(
        default_factory=default_worker_memory,
        gt=0,
        description="peak bytes one run may use beyond the worker's interpreter and torch",
    )
    max_trace_bytes: int = Field(2**30, gt=0, description="stored series bytes one run may write")
    # Fair scheduling: a worker claims the oldest queued experiment of the owner with the
    # fewest running (then the one served least recently), and none of an owner already
    # running this many.
    max_running_per_owner: int = Field(4, ge=1)

    # Requests: sizes refused before anything is read or stored (api/guard.py).
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="all headers together")
    max_json_depth: int = Field(32, ge=4, description="nesting of objects and arrays in a body")
    # Trace answers: at most this many points a series (evenly spaced, whatever max_points
    # asks), and this many values in all (a temporal profile row is T values).
    max_trace_points: int = Field(10_000, ge=10)
    max_trace_values: int = Field(1_000_000, ge=1000)
    # Open SSE streams per key and API process; plots and reports drawn at once per API
    # process (a request waits at most RENDER_WAIT_S for a slot, then 503 with Retry-After).
    max_streams_per_owner: int = Field(20, ge=1)
    # A stream's verdict so far (it reads the last profiles back) at most this often.
    stream_verdict_every_s: float = Field(5.0, gt=0)
    max_concurrent_renders: int = Field(2, ge=1)
    render_wait_s: float = Field(2.0, ge=0)
    # Database connections per process: at least the threadpool's 40 threads, so a thread
    # never waits on the pool behind streams and renders.
    db_pool_size: int = Field(10, ge=1)
    # the experiment poll's own async connections, per API process (core/fast_read.py)
    db_async_pool_size: int = Field(8, ge=1)
    db_max_overflow: int = Field(30, ge=0)

    # Per API key: requests per second (token bucket, per API process), and how many of its
    # experiments may be queued or running at once.
    auth_cache_s: float = Field(5.0, ge=0, description="a revoked key works at most this long")
    rate_limit_per_s: float = Field(50.0, gt=0)
    rate_limit_burst: float = Field(100.0, ge=1)
    max_active_per_owner: int = Field(500, ge=1)
    idempotency_ttl_s: float = Field(24 * 3600, gt=0, description="Idempotency-Key lifetime")
    # Key lookups that miss the cache (unknown keys, or a key's first use) per client address
    # and second: each costs a database read, so a flood of made-up keys is a 429.
    auth_miss_rate_per_s: float = Field(5.0, gt=0)
    auth_miss_burst: float = Field(20.0, ge=1)
    # /metrics: open (like /healthz) unless this is set; then it needs `Bearer <METRICS_KEY>`.
    metrics_key: str | None = Field(None, min_length=16)

    # Time limits per experiment: the soft one stops training between steps and keeps what it
    # has; the hard one, for a step that never ends, fails the row and exits the worker process
    # (its supervisor restarts it).
    soft_time_limit_s: float = Field(24 * 3600, gt=0)
    hard_time_limit_grace_s: float = Field(120, gt=0)

    # Webhooks (README, "Webhooks"). The secret signs every delivery; unset, the worker makes
    # one on first use and keeps it in data/webhook_secret (one host: the embedded default).
    webhook_secret: str | None = Field(None, min_length=16)
    webhook_secret_file: Path = DATA_DIR / "webhook_secret"
    # Loopback, private, link-local and reserved addresses are refused (a service that POSTs
    # where a client says must not be a door into its own network) unless this allows them.
    webhook_allow_private: bool = False
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_max_attempts: int = Field(6, ge=1, le=30)
    webhook_backoff_s: float = Field(1.0, gt=0, description="first retry delay; doubles")
    webhook_backoff_max_s: float = Field(300.0, gt=0)
    webhook_poll_s: float = Field(0.5, gt=0, description="how often the dispatcher looks")
    # Deliveries in flight per dispatcher, and per owner among them: a receiver that never
    # answers holds at most this many of its owner's, never another owner's.
    webhook_concurrency: int = Field(8, ge=1)
    webhook_per_owner: int = Field(2, ge=1)

    # Uploaded datasets (README, "Your own data"): the largest file accepted, the size of the
    # rows its bytes are stored in (the API holds about one at a time), and each worker's
    # local cache of the files it has read, by SHA-256, bounded in bytes.
    max_dataset_bytes: int = Field(256 * 1024 * 1024, ge=1)
    dataset_chunk_bytes: int = Field(1024 * 1024, ge=1024)
    dataset_cache_dir: Path = DATA_DIR / "datasets"
    dataset_cache_bytes: int = Field(2 * 1024**3, ge=0)

    # Browser sessions (the web UI): sign-in with a key sets a signed, expiring cookie. The
    # secret signs it; unset, the API makes one on first use and keeps it in
    # data/session_secret (set it when API processes on several hosts share the sessions).
    session_secret: str | None = Field(None, min_length=16)
    session_secret_file: Path = DATA_DIR / "session_secret"
    session_ttl_s: float = Field(12 * 3600, gt=0, description="a session lasts this long")
    # None: the cookie is Secure when the request came over https (or a proxy said so).
    session_cookie_secure: bool | None = None

    worker_name: str | None = None
    # Threads torch may use in a worker; 1 per worker when several share a CPU.
    torch_threads: int | None = Field(None, ge=1)
    # A worker keeps the memory a training step frees for the next (glibc: worker/allocator.py)
    # instead of faulting it back in every step; handed back when the run ends.
    keep_freed_memory: bool = True


@lru_cache
def get_settings() -> Settings:
    return Settings()
