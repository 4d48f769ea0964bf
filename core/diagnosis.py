"""The diagnosis: a pure function from a run's summary (and spec) to a verdict with its
evidence as numbers, and the mitigations that fit. No torch here: it reads numbers only.

Which profile: the temporal profile of layer 0 (the one nearest the input: its gradient has
come back through every layer and every time step) at the last instrumented step whose loss
and gradients were finite. Its evidence:

- `ratio_first_last` = p[0] / p[T-1]: how much the gradient grew (> 1) or shrank (< 1)
  travelling back through the whole sequence.
- `log_rate_per_step`: least-squares slope of ln p against steps back k = T-1-t, over the
  positive entries; ln(gamma) for a linear RNN with W = gamma Q. < 0 decays going back.
- `effective_horizon`: how many steps back from T-1 the profile stays at least
  HORIZON_FRACTION (1e-3) of p[T-1]; T-1 means the whole sequence.

Verdict, first rule that applies:

1. `diverged`: the run met a non-finite loss or gradient (status diverged or nan_events > 0).
2. `exploding`: ratio_first_last > EXPLODING_RATIO (1e3), or the largest pre-clip gradient
   norm seen > EXPLODING_GRAD_NORM (1e4).
3. `inconclusive`: no profile (temporal instrument off), T < MIN_SEQ_LEN (3), or p[T-1] not
   positive and finite (no gradient reaches the last step).
4. `vanishing`: ratio_first_last < VANISHING_RATIO (1e-3), i.e. the horizon is shorter than
   the sequence.
5. `healthy` otherwise.

The spectrum is reported beside it, never decides: Pascanu et al. 2013's bound says a
largest singular value of W_hh below 1/gamma (gamma = max |f'|: 1 for tanh, relu, leaky relu,
elu and linear; 1/4 for sigmoid) is sufficient for vanishing and above it necessary for
exploding, but a saturated tanh RNN above the bound still vanishes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

VANISHING_RATIO = 1e-3
EXPLODING_RATIO = 1e3
EXPLODING_GRAD_NORM = 1e4
HORIZON_FRACTION = 1e-3
MIN_SEQ_LEN = 3
# The dynamics evidence covers the last WINDOW_STEPS instrumented steps with a finite loss and
# finite gradients (the instruments keep that window; the verdict reads it).
WINDOW_STEPS = 5
GAMMA = {"tanh": 1.0, "sigmoid": 0.25, "relu": 1.0, "leaky_relu": 1.0, "elu": 1.0, "linear": 1.0}


def profile_evidence(profile: Sequence[float]) -> dict[str, Any]:
    """Numbers from one temporal profile p[0..T-1] (the norm of dL/dh_t at each t)."""
    p = [float(v) for v in profile]
    t_len = len(p)
    end = p[-1] if p else math.nan
    out: dict[str, Any] = {"seq_len": t_len, "last": end, "first": p[0] if p else None}
    usable = t_len > 0 and math.isfinite(end) and end > 0
    out["ratio_first_last"] = p[0] / end if usable and math.isfinite(p[0]) else None
    horizon = None
    if usable:
        horizon = t_len - 1
        for k in range(1, t_len):
            if not p[t_len - 1 - k] >= HORIZON_FRACTION * end:  # NaN counts as lost
                horizon = k - 1
                break
    out["effective_horizon"] = horizon
    pts = [(t_len - 1 - t, math.log(v)) for t, v in enumerate(p) if math.isfinite(v) and v > 0]
    out["log_rate_per_step"] = None
    if len(pts) >= 2:
        mk = sum(k for k, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        sxx = sum((k - mk) ** 2 for k, _ in pts)
        out["log_rate_per_step"] = sum((k - mk) * (y - my) for k, y in pts) / sxx
    return out


def _spectrum_evidence(summary: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    model = spec.get("model", {})
    blocks = (summary.get("spectrum") or {}).get("0") or {}
    sigma = max((b["sigma_max"] for b in blocks.values()), default=None)
    gamma = GAMMA.get(model.get("activation") or "") if model.get("cell") == "rnn" else None
    out: dict[str, Any] = {"sigma_max": sigma, "gamma": gamma, "bound": None}
    if gamma is not None and sigma is not None:
        out["bound"] = 1 / gamma
        out["vanishing_guaranteed"] = sigma < 1 / gamma
        out["exploding_possible"] = sigma > 1 / gamma
    return out


def _suggest(verdict: str, spec: Mapping[str, Any], spectrum: Mapping[str, Any]) -> list[dict]:
    """Mitigations from the science notes that fit what was seen and are not already set."""
    model, train = spec.get("model", {}), spec.get("train", {})
    init = model.get("init", {})
    rnn = model.get("cell", "rnn") == "rnn"
    layers = model.get("num_layers", 1)
    out: list[dict] = []

    def add(name: str, setting: dict[str, Any], why: str) -> None:
        out.append({"mitigation": name, "set": setting, "why": why})

    if verdict == "vanishing":
        if rnn:
            add("lstm_or_gru", {"model.cell": "lstm"}, "gated cells keep an additive path")
        if rnn and model.get("activation") in ("tanh", "sigmoid"):
            add(
                "irnn",
                {"model.activation": "relu", "model.init.recurrent": "identity"},
                "relu with identity init (Le et al. 2015): Jacobian I where units are active",
            )
        if init.get("gain", 1.0) < 1 or init.get("recurrent") not in ("orthogonal", "identity"):
            add(
                "orthogonal_init",
                {"model.init.recurrent": "orthogonal", "model.init.gain": 1.0},
                "every singular value of W_hh equal to 1",
            )
        if model.get("norm", "none") == "none":
            add("layer_norm", {"model.norm": "layer"}, "keeps pre-activations out of saturation")
        if layers > 1 and not model.get("residual"):
            add("residual", {"model.residual": True}, "an identity path between stacked layers")
        if layers > 1:
            add("fewer_layers", {"model.num_layers": layers - 1}, "fewer Jacobians in the product")
    elif verdict in ("exploding", "diverged"):
        clip = train.get("clip", {})
        if clip.get("mode", "none") == "none":
            add(
                "clip_norm",
                {"train.clip.mode": "norm"},
                "Pascanu et al. 2013: rescale the gradient when its norm passes a threshold",
            )
        if init.get("gain", 1.0) > 1 or spectrum.get("exploding_possible"):
            add(
                "smaller_gain",
                {"model.init.recurrent": "orthogonal", "model.init.gain": 1.0},
                "sigma_max(W_hh) at or below 1/gamma cannot explode",
            )
        if not train.get("l2"):
            add("l2", {"train.l2": 1e-4}, "weight regularisation holds W_hh's norm down")
        if rnn:
            add("lstm_or_gru", {"model.cell": "lstm"}, "bounded gates and cell updates")
        if model.get("norm", "none") == "none":
            add("layer_norm", {"model.norm": "layer"}, "normalised pre-activations")
    return out


def diagnose(
    summary: Mapping[str, Any], spec: Mapping[str, Any] | None = None, status: str | None = None
) -> dict[str, Any]:
    """{"verdict", "evidence", "suggestions"} from a run's summary and normalised spec."""
    spec = spec or {}
    temporal = (summary.get("temporal_profile") or {}).get("last") or {}
    layers = temporal.get("layers") or []
    prof = layers[0] if layers else None
    first_bad = summary.get("first_nonfinite") or {}
    spectrum = _spectrum_evidence(summary, spec)
    evidence: dict[str, Any] = {
        "profile_step": temporal.get("step"),
        "profile_layer": 0 if prof else None,
        "ratio_first_last": prof and prof["ratio_first_last"],
        "log_rate_per_step": prof and prof["log_rate_per_step"],
        "effective_horizon": prof and prof["effective_horizon"],
        "seq_len": prof and prof["seq_len"],
        "layers": layers,
        "max_grad_norm": summary.get("max_grad_norm"),
        "nan_events": summary.get("nan_events", 0),
        "nan_step": first_bad.get("step", summary.get("halted_at_step")),
        "nan_origin": first_bad.get("origin"),
        "spectrum": spectrum,
        "thresholds": {
            "vanishing_ratio": VANISHING_RATIO,
            "exploding_ratio": EXPLODING_RATIO,
            "exploding_grad_norm": EXPLODING_GRAD_NORM,
            "horizon_fraction": HORIZON_FRACTION,
        },
    }
    ratio = evidence["ratio_first_last"]
    max_norm = summary.get("max_grad_norm") or 0.0
    if status == "diverged" or summary.get("nan_events"):
        verdict = "diverged"
    elif (ratio is not None and ratio > EXPLODING_RATIO) or max_norm > EXPLODING_GRAD_NORM:
        verdict = "exploding"
    elif ratio is None or prof["seq_len"] < MIN_SEQ_LEN:
        verdict = "inconclusive"
    elif ratio < VANISHING_RATIO:
        verdict = "vanishing"
    else:
        verdict = "healthy"
    return {
        "verdict": verdict,
        "evidence": evidence,
        "suggestions": _suggest(verdict, spec, spectrum),
    }
