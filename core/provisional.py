"""The verdict so far: core.diagnosis run on what a running experiment has stored, for the
live stream. The worker's summary (the diagnosis' input) exists only once a run ends; this
rebuilds the parts of it the gradient-flow verdict reads from the stored series, with the
diagnosis' own window (the last WINDOW_STEPS instrumented steps whose profiles are finite):

- `temporal_profile.window`: each step's `temporal/{layer}` (and `cell_temporal/{layer}` for
  an lstm) turned into evidence by core.diagnosis.profile_evidence, as the worker does;
- `lyapunov.window`: `lambda_1` of each step's `lyapunov/{layer}`;
- `spectrum`: the last `spectrum/{layer}/{block}/{quantity}` point;
- `nan_events`, `norm_overflow_events`, `first_nonfinite`: from the stored events.

Left out, so never judged while a run goes: the credit check (its fade, `decay`, is not a
stored series), the reach instrument (copy's recall-loss credit), and the outcome (the task's
baseline is known to the worker only). Every read is bounded: the steps of each series, then
the values of its last few points only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import series
from core.diagnosis import WINDOW_STEPS, diagnose, profile_evidence
from core.tables import Event
from core.traces import read_series

# Read back further than the window, so that a non-finite profile or two among the last steps
# still leaves a full window.
LOOK_BACK = 2 * WINDOW_STEPS


def last_points(n: int):
    """A picker of the last `n` points of a series."""

    def pick(steps: Sequence[int]) -> Sequence[int]:
        return range(max(0, len(steps) - n), len(steps))

    return pick


def _finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _by_layer(found: dict[str, tuple[list[int], list[Any]]], group: str) -> dict[int, dict]:
    """{layer: {step: vector}} of the `group/{layer}` series."""
    out: dict[int, dict] = {}
    for name, (steps, values) in found.items():
        keys = series.keys(name, group)
        if len(keys) == 1 and keys[0].isdigit():
            out[int(keys[0])] = dict(zip(steps, values, strict=True))
    return out


def _temporal_window(session: Session, row: Any) -> list[dict[str, Any]]:
    pick = last_points(LOOK_BACK)
    h = _by_layer(
        read_series(session, row, prefix=series.prefix(series.TEMPORAL), pick=pick), series.TEMPORAL
    )
    c = _by_layer(
        read_series(session, row, prefix=series.prefix(series.CELL_TEMPORAL), pick=pick),
        series.CELL_TEMPORAL,
    )
    if not h:
        return []
    n_layers = max(h) + 1
    steps = sorted({s for by_step in h.values() for s in by_step})
    # a step every layer's profile has, finite (the worker's window holds finite steps only)
    kept = [s for s in steps if all(s in h.get(i, {}) and _finite(h[i][s]) for i in h)]
    window = []
    for s in kept[-WINDOW_STEPS:]:
        entry: dict[str, Any] = {
            "step": s,
            "layers": [
                profile_evidence(h[i][s]) if s in h.get(i, {}) else None for i in range(n_layers)
            ],
        }
        if c:
            entry["cell_layers"] = [
                profile_evidence(c[i][s]) if s in c.get(i, {}) and _finite(c[i][s]) else None
                for i in range(n_layers)
            ]
        window.append(entry)
    return window


def _lyapunov_window(session: Session, row: Any) -> list[dict[str, Any]]:
    found = read_series(
        session, row, prefix=series.prefix(series.LYAPUNOV), pick=last_points(LOOK_BACK)
    )
    lam = _by_layer(found, series.LYAPUNOV)
    if not lam:
        return []
    n_layers = max(lam) + 1
    steps = sorted({s for by_step in lam.values() for s in by_step})
    kept = [s for s in steps if all(_finite(lam[i][s]) for i in lam if s in lam[i])]
    return [
        {
            "step": s,
            "layers": [
                {"lambda_1": lam[i][s][0]} if s in lam.get(i, {}) else None for i in range(n_layers)
            ],
        }
        for s in kept[-WINDOW_STEPS:]
    ]


def _spectrum(session: Session, row: Any) -> dict[str, dict[str, dict[str, float]]]:
    found = read_series(session, row, prefix=series.prefix(series.SPECTRUM), pick=last_points(1))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, (_, values) in found.items():
        keys = series.keys(name, series.SPECTRUM)
        if len(keys) == 3 and values:
            layer, block, quantity = keys
            out.setdefault(layer, {}).setdefault(block, {})[quantity] = values[-1]
    # the diagnosis reads sigma_max of every block
    return {
        layer: {b: q for b, q in blocks.items() if "sigma_max" in q}
        for layer, blocks in out.items()
    }


def _events(session: Session, row: Any) -> dict[str, Any]:
    of_attempt = (Event.experiment_id == row.id, Event.attempt == row.attempt)
    counts = dict(
        session.execute(
            select(Event.kind, func.count())
            .where(*of_attempt, Event.kind.in_(("nonfinite", "norm_overflow")))
            .group_by(Event.kind)
        ).all()
    )
    first = session.execute(
        select(Event.step, Event.detail)
        .where(*of_attempt, Event.kind == "nonfinite")
        .order_by(Event.id)
        .limit(1)
    ).first()
    return {
        "nan_events": counts.get("nonfinite", 0),
        "norm_overflow_events": counts.get("norm_overflow", 0),
        "first_nonfinite": None
        if first is None
        else {"step": first.step, "origin": (first.detail or {}).get("origin")},
    }


def stored_summary(session: Session, row: Any) -> dict[str, Any]:
    """The part of the worker's summary that the stored series and events give (see above)."""
    return {
        "temporal_profile": {"window": _temporal_window(session, row)},
        "lyapunov": {"window": _lyapunov_window(session, row)},
        "spectrum": _spectrum(session, row),
        **_events(session, row),
    }


def verdict_so_far(session: Session, row: Any) -> dict[str, Any] | None:
    """The diagnosis of what `row` (an experiment, its current attempt) has stored so far,
    marked provisional, with `step`, the last instrumented step it reads; None while nothing
    it reads is stored. The outcome is left out (it needs the task's baseline: at the end)."""
    summary = stored_summary(session, row)
    windows = summary["temporal_profile"]["window"] + summary["lyapunov"]["window"]
    if not windows and not summary["nan_events"]:
        return None
    steps = [w["step"] for w in windows]
    if summary["first_nonfinite"] is not None:
        steps.append(summary["first_nonfinite"]["step"])
    diagnosis = diagnose(summary, row.spec or {}, row.status)
    del diagnosis["outcome"]
    step = max((s for s in steps if s is not None), default=None)
    return {"provisional": True, "step": step, **diagnosis}
