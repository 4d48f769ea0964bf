"""Server-side plots (matplotlib, Agg, no pyplot): figures from plain lists, as PNG or SVG.

No torch and no database here: the routes (api/routes/plots.py) read the series and hand them
over. Every function returns a finished figure; `render` turns it into bytes. A figure with no
data yet is still a valid image, with a line of text that says why it is empty.

matplotlib is not thread-safe as a whole (font cache, mathtext), and the routes run on a
threadpool, so drawing and saving happen under one lock. matplotlib (and numpy with it) is
imported on the first plot, not with the app: `import api.main` stays free of numpy."""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}
NAMES = ("temporal", "loss", "gradients", "spectrum", "lyapunov", "credit")
OVERLAY_QUANTITIES = ("loss", "val_loss", "grad_norm")
# The heatmap is drawn on at most this many training steps x time steps (evenly thinned).
MAX_ROWS, MAX_COLS = 400, 1000
_LOCK = threading.Lock()


@cache
def _np():
    import matplotlib

    matplotlib.use("Agg")  # no display: a server never opens a window
    import numpy

    return numpy


def render(fig: Figure, fmt: str) -> bytes:
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"unknown format {fmt!r}")
    buf = io.BytesIO()
    with _LOCK:
        fig.savefig(buf, format=fmt, dpi=100, metadata=_metadata(fmt))
    return buf.getvalue()


def _metadata(fmt: str) -> dict[str, Any]:
    # No creation date: the same data draws the same bytes.
    return {"Date": None} if fmt == "svg" else {"Software": "gradlab"}


def _figure(width: float, height: float) -> Figure:
    _np()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def empty_figure(title: str, message: str) -> Figure:
    fig = _figure(8, 4)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=13, color="0.35")
    return fig


def _finite(values: Sequence[float | None]) -> np.ndarray:
    np = _np()
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def _positive(values: Sequence[float | None]) -> bool:
    np = _np()
    a = _finite(values)
    a = a[np.isfinite(a)]
    return a.size > 0 and bool((a > 0).all())


def _thin_index(n: int, most: int) -> np.ndarray:
    np = _np()
    if n <= most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, most).round().astype(int))


def temporal_figure(layers: list[dict[str, Any]], title: str) -> Figure:
    """Per layer: a heatmap of log10 ||dL/dh_t|| (x: time step t, y: training step), and the
    profile at the first, middle and last instrumented steps. Zero and non-finite values are
    left blank (grey)."""
    if not layers or not any(len(layer["values"]) for layer in layers):
        return empty_figure(title, "no temporal profiles (yet)")
    np = _np()
    import matplotlib

    n = len(layers)
    fig = _figure(12, 3.6 * n + 0.6)
    fig.suptitle(title)
    axes = fig.subplots(n, 2, squeeze=False, width_ratios=[3, 2])
    for (heat, prof), layer in zip(axes, layers, strict=True):
        steps = np.array(layer["steps"], dtype=float)
        values = layer["values"]
        if not isinstance(values, np.ndarray):
            values = np.array([[math.nan if v is None else v for v in r] for r in values], float)
        if values.size == 0:
            heat.set_axis_off()
            prof.set_axis_off()
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            logv = np.where(values > 0, np.log10(values), np.nan)
        logv[~np.isfinite(logv)] = np.nan
        rows = _thin_index(logv.shape[0], MAX_ROWS)
        cols = _thin_index(logv.shape[1], MAX_COLS)
        t_len = values.shape[1]
        y0, y1 = steps[rows[0]], steps[rows[-1]]
        if y1 == y0:
            y1 = y0 + 1
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
        img = heat.imshow(
            logv[np.ix_(rows, cols)],
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            cmap=cmap,
            extent=(-0.5, t_len - 0.5, y0, y1),
        )
        heat.set_xlabel("time step t")
        heat.set_ylabel("training step")
        heat.set_title(f"layer {layer['layer']}: log10 ||dL/dh_t||")
        fig.colorbar(img, ax=heat, label="log10 ||dL/dh_t||")
        picks = sorted({0, len(steps) // 2, len(steps) - 1})
        for i in picks:
            row = values[i]
            ok = np.isfinite(row) & (row > 0)
            prof.plot(np.arange(t_len)[ok], row[ok], label=f"step {int(steps[i])}")
        if np.isfinite(values).any() and (values > 0).any():
            prof.set_yscale("log")
        prof.set_xlabel("time step t")
        prof.set_ylabel("||dL/dh_t||")
        prof.set_title("profile (the loss is read at the last t)")
        prof.grid(True, alpha=0.3)
        prof.legend(fontsize=8)
    return fig


def loss_figure(
    steps: Sequence[int],
    loss: Sequence[float | None],
    val_steps: Sequence[int],
    val_loss: Sequence[float | None],
    baseline: float | None,
    title: str,
) -> Figure:
    """Training loss per step, validation loss, and the task's baseline (the loss of the best
    constant answer: below it the network has learned something)."""
    if not steps and not val_steps:
        return empty_figure(title, "no loss recorded (yet)")
    fig = _figure(9, 4.5)
    ax = fig.add_subplot()
    ax.set_title(title)
    if steps:
        ax.plot(steps, _finite(loss), lw=1, label="training loss")
    if val_steps:
        ax.plot(val_steps, _finite(val_loss), "o-", ms=3, label="validation loss")
    if baseline is not None and math.isfinite(baseline):
        ax.axhline(baseline, color="crimson", ls="--", label=f"baseline {baseline:.4g}")
    everything = [*loss, *val_loss, *([baseline] if baseline is not None else [])]
    if _positive(everything):
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def gradients_figure(
    steps: Sequence[int],
    parameters: dict[str, Sequence[float | None]],
    before_clip: Sequence[float | None],
    after_clip: Sequence[float | None],
    title: str,
) -> Figure:
    """Per-parameter gradient L2 norms (before clipping) and the global norm before and after
    clipping, at the instrumented steps, on a log scale."""
    if not steps:
        return empty_figure(title, "no gradient norms recorded (yet)")
    fig = _figure(12, 4.8)
    left, right = fig.subplots(1, 2)
    fig.suptitle(title)
    for name, values in parameters.items():
        left.plot(steps, _finite(values), lw=1, label=name)
    left.set_title("per parameter, before clipping")
    right.plot(steps, _finite(before_clip), lw=1.2, label="global, before clipping")
    if any(v is not None for v in after_clip):
        right.plot(steps, _finite(after_clip), lw=1.2, ls="--", label="global, after clipping")
    right.set_title("global norm")
    for ax, vals in ((left, [v for vs in parameters.values() for v in vs]), (right, before_clip)):
        if _positive(vals):
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("||dL/dW||")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def spectrum_figure(
    series: dict[str, dict[str, dict[str, tuple[list[int], list[float]]]]],
    bound: float | None,
    title: str,
) -> Figure:
    """Per layer: sigma_max (solid) and spectral radius (dashed) of each gate block of W_hh,
    and the line sigma_max = 1/gamma (below it vanishing is guaranteed, above it exploding is
    possible: Pascanu et al. 2013). `series[layer][block][quantity] = (steps, values)`."""
    if not series:
        return empty_figure(title, "no recurrent spectrum recorded (yet)")
    layers = sorted(series, key=lambda s: int(s) if s.isdigit() else s)
    fig = _figure(9, 3.8 * len(layers) + 0.6)
    fig.suptitle(title)
    axes = fig.subplots(len(layers), 1, squeeze=False)[:, 0]
    for ax, layer in zip(axes, layers, strict=True):
        for i, (block, quantities) in enumerate(sorted(series[layer].items())):
            color = f"C{i}"
            if "sigma_max" in quantities:
                s, v = quantities["sigma_max"]
                ax.plot(s, _finite(v), color=color, label=f"{block}: sigma_max")
            if "radius" in quantities:
                s, v = quantities["radius"]
                # measured on the dynamics steps only: a few points, each marked
                label = f"{block}: spectral radius"
                ax.plot(s, _finite(v), color=color, ls="--", marker="o", ms=3, label=label)
        if bound is not None:
            ax.axhline(bound, color="crimson", ls=":", label=f"1/gamma = {bound:.3g}")
        ax.set_title(f"layer {layer}: W_hh")
        ax.set_xlabel("training step")
        ax.set_ylabel("singular value / spectral radius")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def lyapunov_figure(
    layers: dict[str, dict[str, tuple[list[int], list[list[float]]]]], title: str
) -> Figure:
    """Per layer: sigma_max and sigma_min of dh_{T-1}/dh_{T-1-tau} against the lag tau at the
    first and last measured steps (log-log; a slope of lambda per step on the log axis), and
    the top-k Lyapunov exponents over training steps with the line 0 (above: perturbations
    grow, the gradient can explode; below: they shrink). `layers[layer]["lyapunov"]`,
    `["conditioning/sigma_max"]`, `["conditioning/sigma_min"]` = (steps, rows)."""
    if not any(q.get("lyapunov", ([], []))[0] for q in layers.values()):
        return empty_figure(title, "no Lyapunov exponents recorded (yet)")
    np = _np()
    names = sorted(layers, key=lambda s: int(s) if s.isdigit() else s)
    fig = _figure(12, 3.8 * len(names) + 0.6)
    fig.suptitle(title)
    axes = fig.subplots(len(names), 2, squeeze=False)
    for (cond, lyap), layer in zip(axes, names, strict=True):
        q = layers[layer]
        steps, big = q.get("conditioning/sigma_max", ([], []))
        _, small = q.get("conditioning/sigma_min", ([], []))
        if steps:
            lags = 2.0 ** np.arange(len(big[0]))  # core.series.conditioning_lags
            for i in sorted({0, len(steps) - 1}):
                cond.plot(lags, _finite(big[i]), "o-", ms=3, label=f"sigma_max, step {steps[i]}")
                cond.plot(lags, _finite(small[i]), "s--", ms=3, label=f"sigma_min, step {steps[i]}")
            if _positive([v for r in (*big, *small) for v in r]):
                cond.set_yscale("log")
            cond.set_xscale("log", base=2)
            cond.axhline(1.0, color="0.5", lw=0.8)
        cond.set_xlabel("lag tau (steps)")
        cond.set_ylabel("singular value of dh_{T-1}/dh_{T-1-tau}")
        cond.set_title(f"layer {layer}: conditioning over lags")
        l_steps, exps = q.get("lyapunov", ([], []))
        if l_steps:
            values = np.array([[math.nan if v is None else v for v in r] for r in exps], float)
            for j in range(values.shape[1]):
                lyap.plot(l_steps, values[:, j], lw=1.2 if j == 0 else 0.8, label=f"lambda_{j + 1}")
        lyap.axhline(0.0, color="crimson", ls=":", lw=1)
        lyap.set_xlabel("training step")
        lyap.set_ylabel("exponent (per time step)")
        lyap.set_title(f"layer {layer}: top Lyapunov exponents")
        for ax in (cond, lyap):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    return fig


def credit_figure(
    vector: tuple[list[int], list[list[float]]],
    ratio: tuple[list[int], list[float]],
    key_steps: list[int] | None,
    title: str,
) -> Figure:
    """Left: the credit ratio ||dL/dx at the key inputs|| / ideal over training steps (1: the
    gradient reaches the information in full; ~0: it does not). Right: ||dL/dx|| at each key
    input (or, for a task without key inputs, at every input step) at the first, middle and
    last instrumented steps."""
    steps, rows_ = vector
    if not steps:
        return empty_figure(title, "no credit recorded (yet)")
    fig = _figure(12, 4.6)
    fig.suptitle(title)
    left, right = fig.subplots(1, 2)
    r_steps, r_values = ratio
    if r_steps:
        left.plot(r_steps, _finite(r_values), lw=1.2, label="credit ratio")
        left.axhline(1.0, color="crimson", ls=":", lw=1, label="ideal")
        if _positive(r_values):
            left.set_yscale("log")
        left.legend(fontsize=8)
    else:
        left.text(0.5, 0.5, "no key inputs: no ratio", ha="center", va="center", color="0.35")
    left.set_xlabel("training step")
    left.set_ylabel("||dL/dx_key|| / ideal")
    left.set_title("credit ratio")
    width = len(rows_[0])
    xs = key_steps if key_steps is not None and len(key_steps) == width else list(range(width))
    for i in sorted({0, len(steps) // 2, len(steps) - 1}):
        right.plot(xs, _finite(rows_[i]), "o-", ms=3, label=f"step {steps[i]}")
    if _positive([v for r in rows_ for v in r]):
        right.set_yscale("log")
    right.set_xlabel("key input (time step)" if r_steps else "input time step t")
    right.set_ylabel("||dL/dx||")
    right.set_title("credit per key input")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    return fig


def overlay_figure(
    lines: list[tuple[str, Sequence[int], Sequence[float | None]]], quantity: str, title: str
) -> Figure:
    """One line per experiment (or per grid point and seed); lines sharing a label share a
    colour, and the label is shown once."""
    if not any(steps for _, steps, _ in lines):
        return empty_figure(title, f"no {quantity} recorded (yet)")
    fig = _figure(10, 5)
    ax = fig.add_subplot()
    ax.set_title(title)
    colors: dict[str, str] = {}
    everything: list[float | None] = []
    for label, steps, values in lines:
        first = label not in colors
        color = colors.setdefault(label, f"C{len(colors) % 10}")
        ax.plot(steps, _finite(values), lw=1, color=color, label=label if first else None)
        everything.extend(values)
    if _positive(everything):
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel({"grad_norm": "global gradient norm (before clipping)"}.get(quantity, quantity))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig
