"""What each figure shows, read from an experiment's stored series; the drawing itself is in
render/plots.py, which knows no database."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from api.render import plots
from api.serializers import point_label, run_label
from core import series
from core.diagnosis import GAMMA
from core.tables import Experiment
from core.traces import concat, load_prefixed, load_series

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


def experiment_figure(session: Session, row: Experiment, name: str) -> Figure:
    """The named figure of one experiment, read from its current attempt's series."""
    if name == "temporal":
        layers = []
        for name_, chunks in load_prefixed(session, row, series.prefix(series.TEMPORAL)).items():
            steps, values = plots.packed_rows(chunks)
            layer = int(series.tail(name_, series.TEMPORAL))
            layers.append({"layer": layer, "steps": steps, "values": values})
        layers.sort(key=lambda d: d["layer"])
        return plots.temporal_figure(layers, _title(row, "gradient through time"))
    if name == "loss":
        found = load_series(session, row, [series.LOSS, series.VAL_LOSS])
        steps, loss = concat(found[series.LOSS])
        vsteps, vloss = concat(found[series.VAL_LOSS])
        baseline = (row.summary or {}).get("baseline_loss")
        baseline = baseline if isinstance(baseline, int | float) else None
        return plots.loss_figure(steps, loss, vsteps, vloss, baseline, _title(row, "loss"))
    if name == "gradients":
        found = load_series(session, row, [series.GRAD_NORM_TOTAL, series.CLIP_AFTER])
        steps, before = concat(found[series.GRAD_NORM_TOTAL])
        after_map = dict(zip(*concat(found[series.CLIP_AFTER]), strict=True))
        params = {}
        for name_, chunks in sorted(
            load_prefixed(session, row, series.prefix(series.GRAD)).items()
        ):
            p_steps, values = concat(chunks)
            by_step = dict(zip(p_steps, values, strict=True))
            params[series.tail(name_, series.GRAD)] = [by_step.get(s) for s in steps]
        after = [after_map.get(s) for s in steps]
        return plots.gradients_figure(steps, params, before, after, _title(row, "gradient norms"))
    if name == "spectrum":
        tree: dict[str, dict[str, dict[str, tuple[list[int], list[float]]]]] = {}
        for name_, chunks in load_prefixed(session, row, series.prefix(series.SPECTRUM)).items():
            parts = series.keys(name_, series.SPECTRUM)
            if len(parts) != 3:
                continue
            layer, block, quantity = parts
            tree.setdefault(layer, {}).setdefault(block, {})[quantity] = concat(chunks)
        return plots.spectrum_figure(tree, spectrum_bound(row), _title(row, "recurrent spectrum"))
    raise ValueError(f"no plot {name!r}")


SERIES_OF = {"loss": series.LOSS, "val_loss": series.VAL_LOSS, "grad_norm": series.GRAD_NORM_TOTAL}


def overlay(
    session: Session, rows: list[Experiment], quantity: str, title: str, by_point: bool
) -> Figure:
    wanted = SERIES_OF[quantity]
    lines = []
    for row in rows:
        steps, values = concat(load_series(session, row, [wanted])[wanted])
        label = point_label(row.sweep_params) if by_point else run_label(row)
        lines.append((label, steps, values))
    return plots.overlay_figure(lines, quantity, title)
