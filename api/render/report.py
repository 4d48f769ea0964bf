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
    "fades to the left vanishes going back through time; the right panel is the same profile at "
    "three training steps.",
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
        parts.append(table(sorted(evidence.items()), ("evidence", "value")))
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
    parts.append(table(sorted(summary.items())) if summary else "<p class=muted>not yet</p>")
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


def sweep_page(view: dict[str, Any], images: dict[str, bytes], link: Any) -> str:
    """`view`: the sweep resource (api.routes.sweeps.sweep_view); `link(experiment_id)`: the
    URL of that experiment's report."""
    name = view.get("name") or view["id"]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(view.get("counts", {}).items()))
    parts = [
        f"<h1>{esc(name)}</h1>",
        f"<p class=muted>sweep <code>{esc(view['id'])}</code> · status "
        f"<b id=status>{esc(view['status'])}</b> · {esc(view['experiments'])} experiments "
        f"({esc(counts)})</p>",
        "<h2>Plots</h2>",
    ]
    for plot_name, png in images.items():
        parts.append(figure(plot_name, png, f"{plot_name} of every run; one colour a grid point"))
    parts.append("<h2>Grid points, best first</h2>")
    head = (
        "<tr><th>rank</th><th>point</th><th>solved</th><th>diverged</th><th>val loss (mean)</th>"
        "<th>verdicts</th><th>experiments</th></tr>"
    )
    rows = []
    for p in sorted(view.get("points", []), key=lambda p: p.get("rank", 0)):
        stats = p.get("stats") or {}
        exps = " ".join(
            f'<a href="{esc(link(e))}">{esc(e[:8])}</a>' for e in p.get("experiments", [])
        )
        solved = stats.get("solved_fraction")
        rows.append(
            f"<tr><td>{esc(p.get('rank'))}</td><td>{esc(fmt_value(p.get('params')))}</td>"
            f"<td>{esc(fmt_value(solved))}</td><td>{esc(fmt_value(stats.get('diverged')))}</td>"
            f"<td>{esc(fmt_value(_mean(stats.get('final_val_loss'))))}</td>"
            f"<td>{esc(fmt_value(stats.get('verdicts')))}</td><td>{exps}</td></tr>"
        )
    parts.append(f"<table id=points>{head}{''.join(rows)}</table>")
    effects = view.get("effects") or []
    if effects:
        items = "".join(f"<li>{esc(_effect_line(e))}</li>" for e in effects)
        parts.append(f"<h2>Effects</h2><ul id=effects>{items}</ul>")
    return page(f"gradlab sweep: {name}", "".join(parts))


def _mean(value: Any) -> Any:
    return value.get("mean") if isinstance(value, dict) else value


def _effect_line(effect: Any) -> str:
    if isinstance(effect, dict):
        return str(effect.get("summary") or fmt_value(effect))
    return str(effect)
