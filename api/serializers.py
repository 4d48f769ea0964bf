"""Rows -> JSON: the experiment and sweep resources."""

from datetime import UTC, datetime
from typing import Any

from core.status import TERMINAL
from core.sweeps import aggregate, effects, rank_key
from core.tables import Experiment, Sweep, as_utc


def progress(row: Experiment) -> dict[str, Any]:
    """Steps done of all, and for a running row the seconds left at the pace so far."""
    out: dict[str, Any] = {"step": row.progress_step, "total_steps": row.total_steps}
    started = as_utc(row.started_at)
    if row.status == "running" and started is not None and row.progress_step:
        elapsed = (datetime.now(UTC) - started).total_seconds()
        per_step = elapsed / row.progress_step
        out["eta_s"] = round(max(row.total_steps - row.progress_step, 0) * per_step, 1)
    return out


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
        "source": getattr(row, "source", None) or "service",
        "attempt": row.attempt,
        "created_at": as_utc(row.created_at),
        "started_at": as_utc(row.started_at),
        "finished_at": as_utc(row.finished_at),
        "progress": progress(row),
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


def point_label(params: dict[str, Any] | None) -> str:
    """A grid point's values, short: `cell=lstm, seq_len=50`."""
    parts = []
    for key, value in sorted((params or {}).items()):
        if isinstance(value, dict):
            value = value.get("label", value)
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return ", ".join(parts) or "base"


def run_label(row: Experiment) -> str:
    """A run's name for a legend or a TensorBoard run: its name (or its id's first 8
    characters), and for a sweep's run the grid point and the seed that tell it from the sweep's
    other runs, which share the sweep's name."""
    name = row.name or row.id[:8]
    if row.sweep_id is None:
        return name
    seed = (row.spec or {}).get("seed")
    return f"{name} [{point_label(row.sweep_params)}, seed={seed}]"
