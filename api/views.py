"""Rows -> JSON: the experiment resource and thinned trace series."""

import math
from dataclasses import dataclass
from typing import Any

from fastapi import Query

from api.tables import Experiment, as_utc


def experiment_view(row: Experiment) -> dict[str, Any]:
    base = f"/v1/experiments/{row.id}"
    return {
        "id": row.id,
        "status": row.status,
        "name": row.name,
        "tags": row.tags or [],
        "sweep_id": row.sweep_id,
        "sweep_params": row.sweep_params,
        "attempt": row.attempt,
        "created_at": as_utc(row.created_at),
        "started_at": as_utc(row.started_at),
        "finished_at": as_utc(row.finished_at),
        "progress": {"step": row.progress_step, "total_steps": row.total_steps},
        "spec": row.spec,
        "summary": row.summary,
        "diagnosis": row.diagnosis,
        "error": row.error,
        "links": {
            "self": base,
            "metrics": f"{base}/metrics",
            "gradients": f"{base}/gradients",
            "events": f"{base}/events",
            "instruments": f"{base}/instruments",
            "cancel": f"{base}/cancel",
            "webhooks": f"{base}/webhooks",
        },
    }


@dataclass
class Thinning:
    """Query parameters that thin a long trace: a step range, then every k-th point, then at
    most `max_points` evenly spaced."""

    from_step: int | None = Query(None, ge=0)
    to_step: int | None = Query(None, ge=0)
    every: int = Query(1, ge=1, le=1_000_000)
    max_points: int | None = Query(None, ge=1, le=1_000_000)

    def indices(self, steps: list[int]) -> list[int]:
        idx = [
            i
            for i, s in enumerate(steps)
            if (self.from_step is None or s >= self.from_step)
            and (self.to_step is None or s <= self.to_step)
        ][:: self.every]
        if self.max_points is not None and len(idx) > self.max_points:
            stride = math.ceil(len(idx) / self.max_points)
            idx = idx[::stride]
        return idx

    def apply(self, steps: list[int], values: list[Any]) -> tuple[list[int], list[Any]]:
        idx = self.indices(steps)
        return [steps[i] for i in idx], [values[i] for i in idx]
