"""Response schemas: what the API answers, for the OpenAPI document."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from core.status import StatusName


class Progress(BaseModel):
    step: int
    total_steps: int


class ExperimentRead(BaseModel):
    id: str
    status: StatusName
    name: str | None
    tags: list[str]
    note: str | None = None
    sweep_id: str | None = None
    sweep_params: dict[str, Any] | None = None
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
