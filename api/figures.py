"""What each figure shows, read from an experiment's stored series; the drawing itself is in
render/plots.py, which knows no database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from api.render import plots
from core import series
from core.diagnosis import GAMMA
from core.tables import Experiment
from core.traces import concat, load_prefixed, load_series, rows

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _title(row: Experiment, what: str) -> str:
    name = row.name or (row.spec or {}).get("name") or row.id[:8]
    verdict = (row.diagnosis or {}).get("verdict")
    return f"{name} ({row.status}{f', {verdict}' if verdict else ''}): {what}"


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
    if name == "lyapunov":
        layers: dict[str, dict[str, Any]] = {}
        for group in (series.LYAPUNOV, series.CONDITIONING):
            for name_, chunks in load_prefixed(session, row, series.prefix(group)).items():
                layer, *rest = series.keys(name_, group)
                layers.setdefault(layer, {})["/".join([group, *rest])] = rows(chunks)
        return plots.lyapunov_figure(layers, _title(row, "Lyapunov exponents and conditioning"))
    if name == "credit":
        found = load_series(session, row, [series.CREDIT, series.CREDIT_RATIO])
        window = ((row.summary or {}).get("credit") or {}).get("window") or [{}]
        return plots.credit_figure(
            rows(found[series.CREDIT]),
            concat(found[series.CREDIT_RATIO]),
            window[-1].get("key_steps"),
            _title(row, "credit at the inputs that matter"),
        )
    raise ValueError(f"no plot {name!r}")


def point_label(params: dict[str, Any] | None) -> str:
    """A grid point's values, short: `cell=lstm, seq_len=50`."""
    parts = []
    for key, value in sorted((params or {}).items()):
        if isinstance(value, dict):
            value = value.get("label", value)
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return ", ".join(parts) or "base"


SERIES_OF = {"loss": series.LOSS, "val_loss": series.VAL_LOSS, "grad_norm": series.GRAD_NORM_TOTAL}


def overlay(
    session: Session, rows: list[Experiment], quantity: str, title: str, by_point: bool
) -> Figure:
    wanted = SERIES_OF[quantity]
    lines = []
    for row in rows:
        steps, values = concat(load_series(session, row, [wanted])[wanted])
        label = point_label(row.sweep_params) if by_point else (row.name or row.id[:8])
        lines.append((label, steps, values))
    return plots.overlay_figure(lines, quantity, title)
