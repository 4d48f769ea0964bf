"""Expanding a sweep into specs, and comparing its experiments. Pure functions: no database."""

import copy
import itertools
import math
import statistics
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError

from core.budgets import Limits, check_budgets
from core.errors import Problem, field_error, field_errors, invalid_field
from core.presets import PRESETS
from core.spec import MAX_SWEEP_EXPERIMENTS, ExperimentCreate, SweepCreate, TaskShape
from core.status import TERMINAL

VARIANT = "variant"
MAX_LABEL_LEN = 200
MAX_SWEEP_STORED_BYTES = 4 * 2**20  # the specs and grid values of every experiment of a sweep


def deep_merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """`model.cell` -> spec["model"]["cell"]; an object value is merged there."""
    if path == VARIANT:
        deep_merge(spec, {k: v for k, v in value.items() if k != "label"})
        return
    *parents, leaf = path.split(".")
    node = spec
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"{path}: {p} is not an object")
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        deep_merge(node[leaf], value)
    else:
        node[leaf] = copy.deepcopy(value)


def level_label(path: str, value: Any) -> Any:
    return value.get("label", value) if path == VARIANT and isinstance(value, dict) else value


def resolve(req: SweepCreate) -> SweepCreate:
    """A preset request becomes its base, grid and seeds."""
    if req.preset is None:
        return req
    if req.preset not in PRESETS:
        raise invalid_field(
            f"no preset {req.preset!r}; known: {', '.join(sorted(PRESETS))}",
            "preset",
            "unknown preset",
            "value",
            title="Unknown preset",
        )
    if req.base or req.grid:
        raise invalid_field(
            "a preset takes no base or grid", "preset", "preset with base/grid", "value"
        )
    p = PRESETS[req.preset]
    return SweepCreate(
        name=req.name or p["name"],
        preset=req.preset,
        base=p["base"],
        grid=p["grid"],
        seeds=req.seeds or p["seeds"],
    )


def expand(
    req: SweepCreate,
    limits: Limits | float,
    shape_of: Callable[[ExperimentCreate], TaskShape | None] = lambda spec: None,
) -> list[tuple[dict[str, Any], ExperimentCreate]]:
    """Every grid point x seed as (params, validated spec), each within `limits` (a bare
    number: the compute budget only). The first invalid point is a 422 naming it; nothing is
    queued. `shape_of` gives an uploaded dataset's shape (and refuses a missing one) for the
    estimates."""
    if not isinstance(limits, Limits):
        limits = Limits(max_cost=limits)
    if "seed" in req.grid:  # set_path would write it, then the seed loop overwrite it
        raise invalid_field(
            "seeds are not a grid factor: give them as `seeds` (each grid point runs once a seed)",
            "grid.seed",
            "use `seeds`",
            "value",
            title="Invalid grid",
        )
    for path, levels in req.grid.items():
        if path == VARIANT and not all(
            isinstance(v, dict)
            and isinstance(v.get("label"), str)
            and 1 <= len(v["label"]) <= MAX_LABEL_LEN
            for v in levels
        ):
            raise invalid_field(
                f"every `variant` is an object with a `label` of 1 to {MAX_LABEL_LEN} characters",
                "grid.variant",
                "objects with a label",
                "value",
                title="Invalid grid",
            )
    seeds = req.seeds or [0]
    paths = list(req.grid)
    n = math.prod(len(v) for v in req.grid.values()) * len(seeds)
    if n > MAX_SWEEP_EXPERIMENTS:
        raise Problem(
            422,
            "Sweep too large",
            f"{n} experiments; the limit is {MAX_SWEEP_EXPERIMENTS}",
            "sweep-too-large",
            experiments=n,
            limit=MAX_SWEEP_EXPERIMENTS,
            errors=[field_error("grid", "too many points", "limit")],
        )
    out = []
    stored = 0
    for combo in itertools.product(*(req.grid[p] for p in paths)):
        params = {p: level_label(p, v) for p, v in zip(paths, combo, strict=True)}
        for seed in seeds:
            raw = copy.deepcopy(req.base)
            try:
                for p, v in zip(paths, combo, strict=True):
                    set_path(raw, p, v)
                raw["seed"] = seed
                spec = ExperimentCreate.model_validate(raw)
            except (ValidationError, ValueError) as exc:
                errors = (
                    field_errors(list(exc.errors()))
                    if isinstance(exc, ValidationError)
                    else [field_error(None, str(exc), "value")]
                )
                raise Problem(
                    422,
                    "Invalid grid point",
                    f"the point {params} (seed {seed}) is not a valid spec",
                    "validation",
                    point=params,
                    errors=errors,
                ) from exc
            try:
                shape = shape_of(spec)
            except Problem as exc:
                exc.extra["point"] = params
                raise
            check_budgets(spec, limits, params, shape)
            out.append((params, spec))
            stored += len(orjson.dumps(spec.model_dump(mode="json"))) + len(orjson.dumps(params))
    if stored > MAX_SWEEP_STORED_BYTES:
        raise Problem(
            422,
            "Sweep too large",
            f"the expanded sweep would store {stored} bytes of specs, over "
            f"{MAX_SWEEP_STORED_BYTES}",
            "sweep-too-large",
            errors=[field_error("grid", "too large once expanded", "limit")],
        )
    return out


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Effectiveness measures over the seeds of one grid point. `runs` are experiment views:
    status, summary, diagnosis. Only finished runs enter the statistics."""
    done = [r for r in runs if r["status"] in TERMINAL]
    summaries = [r.get("summary") or {} for r in done]
    losses = [v for s in summaries if (v := _num(s.get("final_val_loss"))) is not None]
    solved = [s["solved_at_step"] for s in summaries if s.get("solved_at_step") is not None]
    beat = [
        s["beat_baseline_at_step"] for s in summaries if s.get("beat_baseline_at_step") is not None
    ]
    accs = [v for s in summaries if (v := _num(s.get("accuracy"))) is not None]
    grads = [v for s in summaries if (v := _num(s.get("max_grad_norm"))) is not None]
    evidence = [(r.get("diagnosis") or {}).get("evidence") or {} for r in done]
    horizons = [v for e in evidence if (v := _num(e.get("effective_horizon"))) is not None]
    verdicts = Counter(
        (r.get("diagnosis") or {}).get("verdict") for r in done if r.get("diagnosis")
    )
    return {
        "runs": len(runs),
        "finished": len(done),
        "final_val_loss": {
            "mean": _mean(losses),
            "std": statistics.pstdev(losses) if len(losses) > 1 else (0.0 if losses else None),
            "min": min(losses, default=None),
            "max": max(losses, default=None),
        },
        "solved": len(solved),
        "solved_fraction": len(solved) / len(done) if done else None,
        "steps_to_solve": {
            "mean": _mean(solved),
            "median": statistics.median(solved) if solved else None,
        },
        "steps_to_beat_baseline": {"mean": _mean(beat)},
        "diverged": sum(r["status"] == "diverged" for r in done),
        "failed": sum(r["status"] == "failed" for r in done),
        "nan_events": sum(int(_num(s.get("nan_events")) or 0) for s in summaries),
        "max_grad_norm": max(grads, default=None),
        "effective_horizon": {"mean": _mean(horizons)},
        "accuracy": {"mean": _mean(accs)},
        "verdicts": dict(verdicts),
    }


def rank_key(stats: dict[str, Any]) -> tuple:
    """Most solved first, then fewest diverged, then lowest final validation loss."""
    loss = stats["final_val_loss"]["mean"]
    return (
        -(stats["solved_fraction"] or 0),
        stats["diverged"],
        loss if loss is not None else math.inf,
    )


def effects(points: list[dict[str, Any]], grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """For each factor: its levels, aggregated over every other factor and seed."""
    out = []
    for path, levels in grid.items():
        rows = []
        for level in levels:
            label = level_label(path, level)
            runs = [r for p in points if p["params"][path] == label for r in p["_runs"]]
            s = aggregate(runs)
            rows.append(
                {
                    "value": label,
                    "runs": s["runs"],
                    "finished": s["finished"],
                    "solved": s["solved"],
                    "diverged": s["diverged"],
                    "mean_final_val_loss": s["final_val_loss"]["mean"],
                }
            )
        text = "; ".join(
            f"{r['value']}: diverged {r['diverged']}/{r['finished']}, "
            f"solved {r['solved']}/{r['finished']}"
            for r in rows
        )
        out.append({"factor": path, "levels": rows, "summary": f"{path} -> {text}"})
    return out
