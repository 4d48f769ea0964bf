"""Response schemas: what the API answers, for the OpenAPI document."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from core.status import StatusName


class Progress(BaseModel):
    step: int = Field(description="training steps done")
    total_steps: int = Field(description="training steps the spec asks for")
    eta_s: float | None = Field(
        None, description="running only: seconds left at the pace of the steps done so far"
    )


class ExperimentRead(BaseModel):
    id: str
    status: StatusName
    name: str | None
    tags: list[str]
    note: str | None = None
    sweep_id: str | None = None
    sweep_params: dict[str, Any] | None = None
    source: str = "service"  # "external": fed by gradlab.watch from a user's own loop
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    spec: dict[str, Any]
    summary: dict[str, Any] | None
    diagnosis: dict[str, Any] | None
    error: dict[str, Any] | None
    links: dict[str, str]


class BatchStored(BaseModel):
    seq: int
    stored: bool  # false: this batch number was already stored (a retried upload)


class HeartbeatRead(BaseModel):
    status: str
    cancel_requested: bool


class ExperimentPage(BaseModel):
    items: list[ExperimentRead]
    next_cursor: str | None


class MetricsRead(BaseModel):
    steps: list[int]
    loss: list[float | None]
    accuracy: list[float | None] | None = None
    validation: dict[str, Any]


class GradientsRead(BaseModel):
    steps: list[int]
    parameters: dict[str, list[float | None]]
    global_norm: dict[str, list[float | None]]


class EventRead(BaseModel):
    step: int | None
    kind: str
    detail: dict[str, Any]
    attempt: int
    created_at: datetime


class EventsRead(BaseModel):
    items: list[EventRead]
