"""Rows -> JSON: the experiment resource."""

from typing import Any

from core.tables import Experiment, as_utc


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
