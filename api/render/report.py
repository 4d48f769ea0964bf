"""Report pages: plain server-rendered HTML, one self-contained file each.

The plots are embedded as `data:` PNGs, so the page needs no further request (and no further
credential): it can be opened from the API in a browser (`?key=`), or saved and mailed. A
Content-Security-Policy allows nothing but those images, inline style, and the page's own
small script (pinned by its hash), which marks on <body> how many images loaded."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Iterable
from typing import Any

from core.status import TERMINAL

# After load, <body data-images-loaded="loaded/total">: a check a browser test (or a person)
# can read from the DOM.
SCRIPT = (
    "window.addEventListener('load',function(){var a=Array.prototype.slice.call("
    "document.images),n=a.filter(function(i){return i.complete&&i.naturalWidth>0}).length;"
    "document.body.setAttribute('data-images-loaded',n+'/'+a.length)});"
)
SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",  # a ?key= in the URL never leaves in a Referer
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
VERDICT_COLORS = {
    "healthy": "#1a7f37",
    "vanishing": "#9a6700",
    "exploding": "#cf222e",
    "diverged": "#cf222e",
    "inconclusive": "#57606a",
}
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1200px;color:#1f2328;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.15em;margin-top:28px;
border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #d0d7de;padding:3px 8px;
text-align:left;vertical-align:top} th{background:#f6f8fa}
.verdict{display:inline-block;color:#fff;padding:4px 12px;border-radius:6px;font-weight:600}
.muted{color:#57606a} pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:.85em}
figure{margin:12px 0} img{max-width:100%;border:1px solid #d0d7de}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(", ", ": "), default=str)
    return str(value)


def table(rows: Iterable[tuple[Any, Any]], head: tuple[str, str] | None = None) -> str:
    out = ["<table>"]
    if head:
        out.append(f"<tr><th>{esc(head[0])}</th><th>{esc(head[1])}</th></tr>")
    for key, value in rows:
        out.append(f"<tr><th>{esc(key)}</th><td>{esc(fmt_value(value))}</td></tr>")
    out.append("</table>")
    return "".join(out)


EVIDENCE_FIRST = (
    "ratio_first_last",
    "effective_horizon",
    "log_rate_per_step",
    "max_grad_norm",
    "nan_step",
    "nan_origin",
    "spectrum",
)
SUMMARY_FIRST = (
    "final_val_loss",
    "best_val_loss",
    "final_loss",
    "baseline_loss",
    "solved_at_step",
    "beat_baseline_at_step",
    "accuracy",
    "max_grad_norm",
    "nan_events",
    "clip_fraction",
    "steps_per_second",
    "device",
)


def flat_items(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested objects as dotted rows (`spectrum.sigma_max`), not one cell of raw JSON."""
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += flat_items(value, f"{name}.")
        else:
            out.append((name, value))
    return out


def key_first(values: dict[str, Any], first: tuple[str, ...]) -> list[tuple[str, Any]]:
    """The numbers a reader looks for first, in that order, then the rest by name."""

    def rank(item: tuple[str, Any]) -> tuple[int, str]:
        top = item[0].split(".", 1)[0]
        return (first.index(top) if top in first else len(first), item[0])

    return sorted(flat_items(values), key=rank)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def figure(name: str, png: bytes, caption: str) -> str:
    return (
        f'<figure id="plot-{esc(name)}"><img alt="{esc(name)} plot" src="{data_uri(png)}">'
        f"<figcaption class=muted>{esc(caption)}</figcaption></figure>"
    )


def page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)}</title><style>{STYLE}</style>"
        f"<script>{SCRIPT}</script></head><body>{body}</body></html>"
    )


def verdict_badge(verdict: str | None) -> str:
    color = VERDICT_COLORS.get(verdict or "", "#57606a")
    return f'<span class=verdict style="background:{color}">{esc(verdict or "no diagnosis")}</span>'


PLOT_CAPTIONS = {
    "temporal": "log10 ||dL/dh_t|| over time step t (x) and training step (y): a gradient that "
    "fades to the left vanishes going back through time, one that grows to the left explodes; "
    "the right panel is the same profile at three training steps.",
    "loss": "training and validation loss, with the baseline (the best constant answer).",
    "gradients": "per-parameter gradient norms before clipping, and the global norm before and "
    "after clipping.",
    "spectrum": "largest singular value (solid) and spectral radius (dashed) of W_hh; below the "
    "1/gamma line vanishing is guaranteed, above it exploding is possible.",
    "lyapunov": "largest and smallest singular values of the Jacobian product over lags tau "
    "(left), and the top finite-time Lyapunov exponents per time step over training (right): "
    "above 0 perturbations grow, below 0 they shrink.",
    "credit": "the gradient at the inputs that carry the task's information, against ideal credit "
    "assignment (1: it reached them in full; ~0: it did not), and per key input.",
}


def experiment_page(
    view: dict[str, Any], images: dict[str, bytes], events: list[dict[str, Any]]
) -> str:
    """`view`: the experiment resource (api.serializers.experiment_view); `images`: plot name
    -> PNG."""
    name = view.get("name") or view["id"]
    diagnosis = view.get("diagnosis") or {}
    progress = view.get("progress") or {}
    parts = [
        f"<h1>{esc(name)}</h1>",
        f"<p class=muted>experiment <code>{esc(view['id'])}</code> · status "
        f"<b id=status>{esc(view['status'])}</b> · step {esc(progress.get('step'))} of "
        f"{esc(progress.get('total_steps'))} · attempt {esc(view.get('attempt'))}</p>",
        "<h2>Diagnosis</h2>",
        f"<p id=verdict>{verdict_badge(diagnosis.get('verdict'))}</p>",
    ]
    evidence = diagnosis.get("evidence") or {}
    if evidence:
        parts.append(table(key_first(evidence, EVIDENCE_FIRST), ("evidence", "value")))
    suggestions = diagnosis.get("suggestions") or []
    if suggestions:
        items = "".join(
            f"<li><b>{esc(s.get('mitigation'))}</b>: {esc(s.get('why'))} "
            f"<code>{esc(fmt_value(s.get('set')))}</code></li>"
            for s in suggestions
        )
        parts.append(f"<p>Mitigations that fit:</p><ul id=suggestions>{items}</ul>")
    if view.get("error"):
        parts.append(f"<h2>Error</h2>{table(sorted(view['error'].items()))}")
    parts.append("<h2>Plots</h2>")
    for plot_name, png in images.items():
        parts.append(figure(plot_name, png, PLOT_CAPTIONS.get(plot_name, plot_name)))
    summary = view.get("summary") or {}
    parts.append("<h2>Summary</h2>")
    parts.append(
        table(key_first(summary, SUMMARY_FIRST)) if summary else "<p class=muted>not yet</p>"
    )
    if events:
        rows = "".join(
            f"<tr><td>{esc(e.get('step'))}</td><td>{esc(e['kind'])}</td>"
            f"<td>{esc(e.get('attempt'))}</td><td>{esc(fmt_value(e.get('detail')))}</td></tr>"
            for e in events
        )
        parts.append(
            "<h2>Events</h2><table><tr><th>step</th><th>kind</th><th>attempt</th>"
            f"<th>detail</th></tr>{rows}</table>"
        )
    parts.append("<h2>Spec</h2>")
    parts.append(f"<pre>{esc(json.dumps(view.get('spec'), indent=2))}</pre>")
    times = [(k, view.get(k)) for k in ("created_at", "started_at", "finished_at")]
    parts.append(table(times))
    return page(f"gradlab: {name}", "".join(parts))


def k_of_n(k: Any, n: Any) -> str:
    """A count out of its total, never a bare fraction: `2 of 3`."""
    return f"{fmt_value(k)} of {fmt_value(n)}"


def mean_std(stat: Any) -> str:
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return "–"
    std = stat.get("std")
    return f"{stat['mean']:.4g} ± {std:.2g}" if std else f"{stat['mean']:.4g}"


def readable(value: Any) -> str:
    """A grid value as a person writes it: `lstm`, `50`, `mode: norm, max_norm: 1`."""
    if isinstance(value, dict):
        return str(value.get("label") or ", ".join(f"{k}: {readable(v)}" for k, v in value.items()))
    if isinstance(value, list):
        return ", ".join(readable(v) for v in value)
    return fmt_value(value)


def point_name(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={readable(v)}" for k, v in params.items()) or "base"


def sweep_page(view: dict[str, Any], images: dict[str, bytes], link: Any) -> str:
    """`view`: the sweep resource (api.serializers.sweep_view); `link(experiment_id)`: the
    URL of that experiment's report. The key numbers first (how far it got, the best point),
    then the points ranked (a column a factor, counts out of the finished runs), each factor's
    effect, the overlays."""
    name = view.get("name") or view["id"]
    counts = view.get("counts", {})
    points = sorted(view.get("points", []), key=lambda p: p.get("rank", 0))
    factors = list(view.get("grid") or {})
    finished = sum(n for s, n in counts.items() if s in TERMINAL)
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    parts = [
        f"<h1>{esc(name)}</h1>",
        f"<p class=muted>sweep <code>{esc(view['id'])}</code> · status "
        f"<b id=status>{esc(view['status'])}</b> · {esc(by_status)}</p>",
    ]
    if points:
        best, stats = points[0], points[0].get("stats") or {}
        parts.append(
            f"<p id=key-numbers><b>{esc(k_of_n(finished, view['experiments']))}</b> runs finished"
            f" · best point <b>{esc(point_name(best.get('params') or {}))}</b>: solved "
            f"<b>{esc(k_of_n(stats.get('solved'), stats.get('finished')))}</b>, diverged "
            f"{esc(k_of_n(stats.get('diverged'), stats.get('finished')))}, validation loss "
            f"{esc(mean_std(stats.get('final_val_loss')))}</p>"
        )
    parts.append("<h2>Grid points, best first</h2>")
    head = "".join(
        f"<th>{esc(h)}</th>"
        for h in (
            "rank",
            *factors,
            "solved",
            "diverged",
            "val loss (mean ± std)",
            "steps to solve",
            "verdicts",
            "experiments",
        )
    )
    rows = []
    for p in points:
        stats, params = p.get("stats") or {}, p.get("params") or {}
        n = stats.get("finished")
        exps = " ".join(
            f'<a href="{esc(link(e))}">{esc(e[:8])}</a>' for e in p.get("experiments", [])
        )
        verdicts = ", ".join(f"{v} {c}" for v, c in sorted((stats.get("verdicts") or {}).items()))
        steps = (stats.get("steps_to_solve") or {}).get("mean")
        cells = [
            p.get("rank"),
            *(readable(params.get(f)) for f in factors),
            k_of_n(stats.get("solved"), n),
            k_of_n(stats.get("diverged"), n),
            mean_std(stats.get("final_val_loss")),
            fmt_value(steps),
            verdicts or "–",
        ]
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + f"<td>{exps}</td></tr>")
    parts.append(f"<table id=points><tr>{head}</tr>{''.join(rows)}</table>")
    effects = view.get("effects") or []
    if effects:
        parts.append("<h2>Each factor's effect</h2><div id=effects>")
        for e in effects:
            level_rows = "".join(
                f"<tr><td>{esc(readable(lv.get('value')))}</td>"
                f"<td>{esc(k_of_n(lv.get('solved'), lv.get('finished')))}</td>"
                f"<td>{esc(k_of_n(lv.get('diverged'), lv.get('finished')))}</td>"
                f"<td>{esc(fmt_value(lv.get('mean_final_val_loss')))}</td></tr>"
                for lv in e.get("levels", [])
            )
            parts.append(
                f"<h3>{esc(e.get('factor'))}</h3><table><tr><th>value</th><th>solved</th>"
                f"<th>diverged</th><th>mean val loss</th></tr>{level_rows}</table>"
                f"<p class=muted>{esc(_effect_line(e))}</p>"
            )
        parts.append("</div>")
    parts.append("<h2>Plots</h2>")
    for plot_name, png in images.items():
        parts.append(figure(plot_name, png, f"{plot_name} of every run; one colour a grid point"))
    return page(f"gradlab sweep: {name}", "".join(parts))


def _mean(value: Any) -> Any:
    return value.get("mean") if isinstance(value, dict) else value


def _effect_line(effect: Any) -> str:
    if isinstance(effect, dict):
        return str(effect.get("summary") or fmt_value(effect))
    return str(effect)
