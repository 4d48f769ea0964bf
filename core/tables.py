"""The SQLAlchemy tables. Traces are stored as packed arrays in chunks, not a row per value:
a run logs thousands of steps and the temporal profile adds steps x layers x seq_len floats."""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def new_id() -> str:
    return str(uuid.uuid4())


# BigInteger autoincrement is not a rowid alias on SQLite; Integer there, BIGINT elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    name: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    note: Mapped[str | None] = mapped_column(Text)  # the user's own words, set by PATCH
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    owner: Mapped[str | None] = mapped_column(String(100), index=True)
    sweep_id: Mapped[str | None] = mapped_column(String(36), index=True)
    sweep_params: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # its grid values
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # X-Request-ID of the submitting request: the worker's log lines for this run carry it.
    request_id: Mapped[str | None] = mapped_column(String(128))
    # "service": run by a worker from its spec; "external": fed by gradlab.watch in a user's
    # own loop (never queued, never re-run).
    source: Mapped[str] = mapped_column(String(16), default="service", server_default="service")

    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    enqueued_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    diagnosis: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_experiments_idempotency", "owner", "idempotency_key", unique=True),
        Index("ix_experiments_owner_status", "owner", "status"),
    )


class SeriesChunk(Base):
    """A run of one named series: `steps` (int64) and `values` (float64, `width` per step)."""

    __tablename__ = "series_chunks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    first_step: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer, default=1)
    steps: Mapped[bytes] = mapped_column(LargeBinary)
    values: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_series_lookup", "experiment_id", "name", "first_step"),)


class ExternalBatch(Base):
    """A batch an external run's client has stored: its sequence number makes a retried upload
    a no-op (the primary key refuses it a second time)."""

    __tablename__ = "external_batches"

    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# What an event's `kind` may be: a non-finite loss or gradient (with its origin), a gradient
# norm that overflowed float32 though every entry was finite, a halt, the running alarms for
# webhooks, a worker that stopped beating, and an external run's client that did.
EVENT_KINDS = (
    "nonfinite",
    "norm_overflow",
    "halt",
    "exploding",
    "vanishing",
    "worker_lost",
    "client_lost",
)


class Event(Base):
    """Something that happened once: a NaN/Inf, a skipped step, a halt, a retry."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(40))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sweep(Base):
    """A grid of experiments; its experiments carry its id."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(200))
    owner: Mapped[str | None] = mapped_column(String(100), index=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)  # resolved base, grid, seeds, preset
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ApiKey(Base):
    """An API key, stored hashed: the key itself is shown once, when it is created."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    owner: Mapped[str] = mapped_column(String(100), index=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class WebhookDelivery(Base):
    """One notification for a spec's `notify.url`, written in the transaction of what it
    reports (the outbox); the worker's dispatcher sends it and records every attempt."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)  # the experiment's attempt it reports on
    event: Mapped[str] = mapped_column(String(20))
    url: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Each try: {"at", "status_code", "error", "duration_ms"}; the last few are kept.
    log: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        # one notification per event per attempt, whoever writes it
        Index("ux_webhook_deliveries_once", "experiment_id", "attempt", "event", unique=True),
    )


class DatasetBlob(Base):
    """An uploaded file's bytes, stored once however many datasets point at it: keyed by its
    SHA-256, in `dataset_chunks` rows of at most DATASET_CHUNK_BYTES each."""

    __tablename__ = "dataset_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    n_chunks: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetChunk(Base):
    __tablename__ = "dataset_chunks"

    sha256: Mapped[str] = mapped_column(
        ForeignKey("dataset_blobs.sha256", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Dataset(Base):
    """An owner's uploaded dataset: a name, what validation found (`meta`: shapes, dtypes,
    kind, classes, lengths), and the content it points at."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(ForeignKey("dataset_blobs.sha256"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # classification, regression
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
