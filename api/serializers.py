"""Rows -> JSON: the experiment and sweep resources."""

from typing import Any

from core.status import TERMINAL
from core.sweeps import aggregate, effects, rank_key
from core.tables import Experiment, Sweep, as_utc


def experiment_view(row: Experiment) -> dict[str, Any]:
    base = f"/v1/experiments/{row.id}"
    return {
        "id": row.id,
        "status": row.status,
        "name": row.name,
        "tags": row.tags or [],
        "note": row.note,
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
            "stream": f"{base}/stream",
            "report": f"{base}/report",
            "ui": f"/ui/runs/{row.id}",
        },
    }


def sweep_status(counts: dict[str, int]) -> str:
    """`finished` when every experiment has ended, `queued` when none has started."""
    total = sum(counts.values())
    if sum(n for s, n in counts.items() if s in TERMINAL) == total:
        return "finished"
    return "queued" if counts.get("queued") == total else "running"


def _grid_labels(grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {k: [v.get("label", v) if k == "variant" else v for v in vs] for k, vs in grid.items()}


def sweep_summary(sweep: Sweep, counts: dict[str, int]) -> dict[str, Any]:
    """A sweep in a list: what it varies and how far it has got, without its points."""
    return {
        "id": sweep.id,
        "name": sweep.name,
        "preset": sweep.request.get("preset"),
        "created_at": as_utc(sweep.created_at),
        "status": sweep_status(counts),
        "experiments": sum(counts.values()),
        "counts": counts,
        "grid": _grid_labels(sweep.request["grid"]),
        "seeds": sweep.request["seeds"],
    }


def sweep_view(sweep: Sweep, rows: list[Experiment]) -> dict[str, Any]:
    """The sweep resource from its row and its experiments' rows (in the order made)."""
    grid: dict[str, list[Any]] = sweep.request["grid"]
    views = [experiment_view(r) for r in rows]
    points: dict[str, dict[str, Any]] = {}
    for view, row in zip(views, rows, strict=True):
        params = row.sweep_params or {}
        key = repr(sorted(params.items(), key=lambda kv: kv[0]))
        point = points.setdefault(key, {"params": params, "experiments": [], "_runs": []})
        point["experiments"].append(view["id"])
        point["_runs"].append(view)
    ordered = list(points.values())
    for p in ordered:
        p["stats"] = aggregate(p["_runs"])
    for rank, p in enumerate(sorted(ordered, key=lambda p: rank_key(p["stats"])), start=1):
        p["rank"] = rank
    counts: dict[str, int] = {}
    for v in views:
        counts[v["status"]] = counts.get(v["status"], 0) + 1
    status = sweep_status(counts)
    effect_rows = effects(ordered, grid)
    for p in ordered:
        del p["_runs"]
    return {
        "id": sweep.id,
        "name": sweep.name,
        "preset": sweep.request.get("preset"),
        "created_at": as_utc(sweep.created_at),
        "status": status,
        "experiments": len(views),
        "counts": counts,
        "grid": _grid_labels(grid),
        "seeds": sweep.request["seeds"],
        "points": ordered,
        "ranking": [p["params"] for p in sorted(ordered, key=lambda p: p["rank"])],
        "effects": effect_rows,
    }
