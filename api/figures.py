"""What each figure shows, read from an experiment's stored series; the drawing itself is in
render/plots.py, which knows no database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from api.render import plots
from api.serializers import point_label, run_label
from core import series
from core.diagnosis import GAMMA
from core.settings import get_settings
from core.tables import Experiment
from core.traces import Window, at_steps, read_series

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _title(row: Experiment, what: str) -> str:
    name = row.name or (row.spec or {}).get("name") or row.id[:8]
    verdict = (row.diagnosis or {}).get("verdict")
    said = row.status if verdict in (None, row.status) else f"{row.status}, {verdict}"
    return f"{name} ({said}): {what}"


def spectrum_bound(row: Experiment) -> float | None:
    evidence = (row.diagnosis or {}).get("evidence") or {}
    bound = (evidence.get("spectrum") or {}).get("bound")
    if bound is not None:
        return float(bound)
    model = (row.spec or {}).get("model") or {}
    gamma = GAMMA.get(model.get("activation") or "") if model.get("cell") == "rnn" else None
    return 1 / gamma if gamma else None


# A figure draws at most this many points a line (a few times its width in pixels) and rows a
# heatmap: what it reads of a long run's series is bounded by these, never by the run.
PLOT_POINTS = 2000
NONE: tuple[list, list] = ([], [])


def experiment_figure(session: Session, row: Experiment, name: str) -> Figure:
    """The named figure of one experiment, read from its current attempt's series."""
    line = Window(max_points=PLOT_POINTS).pick
    if name == "temporal":
        found = read_series(
            session,
            row,
            prefix=series.prefix(series.TEMPORAL),
            pick=Window(max_points=plots.MAX_ROWS).pick,
            max_values=get_settings().max_trace_values,
        )
        layers = [
            {"layer": int(series.tail(name_, series.TEMPORAL)), "steps": steps, "values": values}
            for name_, (steps, values) in found.items()
        ]
        layers.sort(key=lambda d: d["layer"])
        return plots.temporal_figure(layers, _title(row, "gradient through time"))
    if name == "loss":
        found = read_series(session, row, names=[series.LOSS, series.VAL_LOSS], pick=line)
        steps, loss = found.get(series.LOSS, NONE)
        vsteps, vloss = found.get(series.VAL_LOSS, NONE)
        baseline = (row.summary or {}).get("baseline_loss")
        baseline = baseline if isinstance(baseline, int | float) else None
        return plots.loss_figure(steps, loss, vsteps, vloss, baseline, _title(row, "loss"))
    if name == "gradients":
        steps, before = read_series(session, row, names=[series.GRAD_NORM_TOTAL], pick=line).get(
            series.GRAD_NORM_TOTAL, NONE
        )
        at = at_steps(steps)
        after_map = dict(
            zip(
                *read_series(session, row, names=[series.CLIP_AFTER], pick=at).get(
                    series.CLIP_AFTER, NONE
                ),
                strict=True,
            )
        )
        params = {}
        for name_, (p_steps, values) in sorted(
            read_series(session, row, prefix=series.prefix(series.GRAD), pick=at).items()
        ):
            by_step = dict(zip(p_steps, values, strict=True))
            params[series.tail(name_, series.GRAD)] = [by_step.get(s) for s in steps]
        after = [after_map.get(s) for s in steps]
        return plots.gradients_figure(steps, params, before, after, _title(row, "gradient norms"))
    if name == "spectrum":
        tree: dict[str, dict[str, dict[str, tuple[list[int], list[float]]]]] = {}
        found = read_series(session, row, prefix=series.prefix(series.SPECTRUM), pick=line)
        for name_, points in found.items():
            parts = series.keys(name_, series.SPECTRUM)
            if len(parts) != 3:
                continue
            layer, block, quantity = parts
            tree.setdefault(layer, {}).setdefault(block, {})[quantity] = points
        return plots.spectrum_figure(tree, spectrum_bound(row), _title(row, "recurrent spectrum"))
    if name == "lyapunov":
        layers: dict[str, dict[str, Any]] = {}
        for group in (series.LYAPUNOV, series.CONDITIONING):
            found = read_series(session, row, prefix=series.prefix(group), pick=line)
            for name_, points in found.items():
                layer, *rest = series.keys(name_, group)
                layers.setdefault(layer, {})["/".join([group, *rest])] = points
        return plots.lyapunov_figure(layers, _title(row, "Lyapunov exponents and conditioning"))
    if name == "credit":
        found = read_series(session, row, names=[series.CREDIT, series.CREDIT_RATIO], pick=line)
        window = ((row.summary or {}).get("credit") or {}).get("window") or [{}]
        return plots.credit_figure(
            found.get(series.CREDIT, NONE),
            found.get(series.CREDIT_RATIO, NONE),
            window[-1].get("key_steps"),
            _title(row, "credit at the inputs that matter"),
        )
    raise ValueError(f"no plot {name!r}")


SERIES_OF = {"loss": series.LOSS, "val_loss": series.VAL_LOSS, "grad_norm": series.GRAD_NORM_TOTAL}


def overlay(
    session: Session, rows: list[Experiment], quantity: str, title: str, by_point: bool
) -> Figure:
    wanted = SERIES_OF[quantity]
    line = Window(max_points=PLOT_POINTS).pick
    lines = []
    for row in rows:
        steps, values = read_series(session, row, names=[wanted], pick=line).get(wanted, NONE)
        label = point_label(row.sweep_params) if by_point else run_label(row)
        lines.append((label, steps, values))
    return plots.overlay_figure(lines, quantity, title)
