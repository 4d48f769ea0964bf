"""The diagnosis: a pure function from a run's summary (and spec) to a verdict per layer and
state, the run's outcome beside it, the evidence as numbers, and the mitigations that fit. No
torch here: it reads numbers only (the keys of the summary contract with the instruments).

The window. Every rule reads the same window: the last WINDOW_STEPS (5) instrumented steps
whose loss and gradients were finite (`temporal_profile.window`, `lyapunov.window`,
`credit.window`, `reach.window`; a summary with only `temporal_profile.last` is a window of
one). Per quantity the median over the window is what is judged, so one odd step is evidence,
never the verdict.

The rate. For each layer l and state (h; for an lstm also the cell path c) the profile
p[t] = ||dL/dx_t|| gives `log_rate_robust`: the Theil-Sen slope (median of the pairwise
slopes) of ln p against steps back k = T-1-t, over the profile's block maxima when T > 128
(blocks of ceil(T/128) steps). It is ln(gamma) for a linear RNN with W = gamma Q at every
length, and a parity or oscillation in the profile (a period-2 W with W^2 = I gives
1, 1e-4, 1, ...) moves it by nothing: half the pairs see the oscillation one way, half the
other. A profile that reaches exactly 0 (float32 underflow, or a gradient cut) k0 steps back
is fitted up to that first zero, which counts as ln(1e-300): the zeros beyond it, all at the
same floor, would make most pairs flat and a profile that underflowed read a rate of 0. And
where that first zero lies within the lag, nothing came back that far: the gain over the lag
is ln(1e-300), whatever the rate (a profile flat and then cut is not healthy).

The lag the task needs, L: adding T - 1 (the first marker may sit at t = 0, read at T - 1);
copy delay + 10 (symbol i at step i, recalled at delay + 10 + i); digits T - 1 (7 rows or 63
pixels); otherwise the profile's length - 1. Each state's log-gain over the lag is
g = rate x L (or, for a task with a loss at every step, ln of the reach instrument's
`ratio_key_to_loss`, the recall loss's own credit at the symbols against its value at
recall; the plain h-profile there mixes every step's local loss term, and so does an lstm's
c-profile, which is then reported beside the reach, not judged). A layer's gain is that
of its best state (the gradient takes the path that carries it: an lstm's cell path keeps it
when the h-path drops). Where a layer has no profile, lambda_1 x L (the top Lyapunov exponent
of h_{t-1} -> h_t, per step) stands in; where both exist lambda_1 is reported beside.

Layer verdict: `exploding` if g > ln(EXPLODING_GAIN) (1e2), `vanishing` if
g < ln(VANISHING_GAIN) (1e-2), else `healthy`. The credit at the inputs that matter (the
credit instrument's ratio to ideal credit, 1 = full credit) is a network-level check: below
CREDIT_VANISHING (1e-2), and faded with the lag (the key inputs' credit against the same
channels' credit at the last step, `decay`, also below CREDIT_VANISHING), it is vanishing
whatever the profiles say. A low ratio that did not fade (inputs barely read at any lag: a
shut input gate) is reported as `credit.weak_at_every_lag`, not as vanishing.

Top-level verdict, first rule that applies:

1. `diverged`: status diverged, a non-finite loss or gradient (nan_events > 0), or the run's
   final validation loss non-finite or over DIVERGED_LOSS_FACTOR (10) x the larger of the
   baseline and the best validation loss it had reached (a `skip_step` run that ended
   `succeeded` with a loss of 6e28 is not fine).
2. `exploding`: a layer exploding; the worst (largest gain) is named.
3. `vanishing`: a layer vanishing (the worst, smallest gain, is named; every vanishing layer is
   listed), or the credit at the key inputs below CREDIT_VANISHING.
4. `inconclusive`: no layer could be judged (no profile, T < MIN_SEQ_LEN, no finite end), or a
   task with a loss at every step judged healthy on h-profiles alone without the reach
   instrument while at the baseline.
5. `healthy` otherwise.

Not verdicts: the global gradient norm (its size scales with the loss, the batch and the
width, not with backpropagation through time): `max_grad_norm`, `grad_norm_median`, their
ratio and `norm_overflow_events` are reported under `transients`; a spike that clipping
absorbed in a run whose window is healthy stays a transient. The spectrum is reported beside
the verdict against Pascanu et al. 2013's bound (a largest singular value of W_hh below
1/gamma, gamma = max |f'|, is sufficient for vanishing).

The outcome (`outcome`): `solved` (solved_at_step set), `learning` (best validation loss
under LEARNING_FRACTION (0.9) x the best constant answer's loss on the validation set itself,
`baseline_loss_val`, else the theoretical `baseline_loss`), `at_baseline`, or `diverged`; for
a divergence its step and fraction of the run, whether it followed learning (beat the
baseline, solved), and whether it was a real non-finite value or a norm overflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

WINDOW_STEPS = 5  # instrumented steps every rule reads (the instrument side imports it)
VANISHING_GAIN = 1e-2  # projected gain over the task's lag below this: vanishing
EXPLODING_GAIN = 1e2  # above this: exploding
CREDIT_VANISHING = 1e-2  # credit at the key inputs / ideal credit below this: vanishing
LEARNING_FRACTION = 0.9  # best val loss under this x baseline: learning
DIVERGED_LOSS_FACTOR = 10.0  # final val loss over this x max(baseline, best): diverged
SPIKE_RATIO = 100.0  # max / median global gradient norm over this: a spike, reported
EARLY_FRACTION = 0.1  # a divergence in the first 10 % of the run, before learning: immediate
ROBUST_POINTS = 128  # block maxima above this many profile points
LOG_FLOOR = math.log(1e-300)  # ln of a zero profile entry
# Kept for the early-warning alarms (webhook events while a run goes); not verdicts.
VANISHING_RATIO = 1e-3
EXPLODING_GRAD_NORM = 1e4
HORIZON_FRACTION = 1e-3
MIN_SEQ_LEN = 3
GAMMA = {"tanh": 1.0, "sigmoid": 0.25, "relu": 1.0, "leaky_relu": 1.0, "elu": 1.0, "linear": 1.0}
MULTI_LOSS_TASKS = ("copy",)  # a loss at more than one step


def theil_sen(points: Sequence[tuple[float, float]]) -> float | None:
    """Median of the pairwise slopes (y_j - y_i) / (x_j - x_i)."""
    slopes = [
        (yj - yi) / (xj - xi)
        for i, (xi, yi) in enumerate(points)
        for xj, yj in points[i + 1 :]
        if xj != xi
    ]
    return median(slopes) if slopes else None


def robust_log_rate(profile: Sequence[float]) -> float | None:
    """Theil-Sen slope of ln p against steps back, over block maxima past ROBUST_POINTS."""
    t_len = len(profile)
    pts = [
        (float(t_len - 1 - t), math.log(v) if v > 0 else LOG_FLOOR)
        for t, v in enumerate(profile)
        if math.isfinite(v) and v >= 0
    ]
    k0 = first_zero_back(profile)
    if k0 is not None:  # up to the first zero back from the end: the rest is the same floor
        pts = [(k, y) for k, y in pts if k <= k0]
    if len(pts) > ROBUST_POINTS:
        size = math.ceil(len(pts) / ROBUST_POINTS)
        blocks = [pts[i : i + size] for i in range(0, len(pts), size)]
        pts = [(sum(k for k, _ in b) / len(b), max(y for _, y in b)) for b in blocks]
    return theil_sen(pts)


def first_zero_back(profile: Sequence[float]) -> int | None:
    """Steps back from the end to the first entry that is exactly 0, None if there is none."""
    t_len = len(profile)
    return next((k for k in range(t_len) if profile[t_len - 1 - k] == 0), None)


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
    out["log_rate_robust"] = robust_log_rate(p) if usable else None
    # (a profile that is 0 at the end too says nothing about propagation: no verdict)
    out["zero_at_steps_back"] = first_zero_back(p) if usable else None
    finite = [v for v in p if math.isfinite(v)]
    out["peak_over_last"] = max(finite) / end if usable and finite else None
    return out


def needed_lag(spec: Mapping[str, Any], seq_len: int | None) -> int | None:
    """The longest lag between an input that matters and the loss that reads it."""
    task = spec.get("task") or {}
    if task.get("name") == "copy" and task.get("seq_len") is not None:
        return int(task["seq_len"]) + 10
    if task.get("name") == "digits":
        return 7 if task.get("read") == "rows" else 63
    if task.get("name") == "adding" and task.get("seq_len") is not None:
        return int(task["seq_len"]) - 1
    return None if seq_len is None else max(seq_len - 1, 1)


def _med(values: Sequence[Any]) -> float | None:
    got = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return median(got) if got else None


def _judge(log_gain: float | None) -> str | None:
    if log_gain is None:
        return None
    if log_gain > math.log(EXPLODING_GAIN):
        return "exploding"
    if log_gain < math.log(VANISHING_GAIN):
        return "vanishing"
    return "healthy"


def _window(summary: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    block = summary.get(key) or {}
    window = block.get("window") if isinstance(block, Mapping) else None
    if window:
        return [w for w in window if w][-WINDOW_STEPS:]
    if key == "temporal_profile" and block.get("last"):
        return [block["last"]]  # summaries written before the window existed
    return []


def _state(entries: list[Any], lag: int | None) -> dict[str, Any] | None:
    """One state's judgement from its profile evidence at each window step."""
    entries = [e for e in entries if e and (e.get("seq_len") or 0) >= MIN_SEQ_LEN]
    if not entries:
        return None
    rates = [e.get("log_rate_robust", e.get("log_rate_per_step")) for e in entries]
    rate = _med(rates)
    gain = None
    if lag is not None:
        gains = []
        for e, r in zip(entries, rates, strict=True):
            k0 = e.get("zero_at_steps_back")
            if k0 is not None and k0 <= lag:
                gains.append(LOG_FLOOR)  # the gradient is exactly 0 within the lag
            elif r is not None:
                gains.append(r * lag)
        gain = _med(gains)
    return {
        "basis": "profile",
        "log_rate_per_step": rate,
        "log_rate_least_squares": _med([e.get("log_rate_per_step") for e in entries]),
        "log_gain_over_lag": gain,
        "ratio_first_last": _med([e.get("ratio_first_last") for e in entries]),
        "effective_horizon": _med([e.get("effective_horizon") for e in entries]),
        "zero_at_steps_back": _med([e.get("zero_at_steps_back") for e in entries]),
        "steps": len(entries),
        "verdict": _judge(gain),
    }


def _per_layer(summary: Mapping[str, Any], spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    temporal = _window(summary, "temporal_profile")
    lyap = _window(summary, "lyapunov")
    reach = _window(summary, "reach")
    n_layers = max((len(w.get("layers") or []) for w in temporal + lyap + reach), default=0)
    seq_len = next((e["seq_len"] for w in temporal for e in (w.get("layers") or []) if e), None)
    lag = needed_lag(spec, seq_len)
    multi_loss = (spec.get("task") or {}).get("name") in MULTI_LOSS_TASKS
    spectrum = summary.get("spectrum") or {}
    out = []
    for layer in range(n_layers):

        def at(window: list[dict[str, Any]], key: str, layer: int = layer) -> list[Any]:
            return [
                (w.get(key) or [])[layer] if layer < len(w.get(key) or []) else None for w in window
            ]

        states: dict[str, Any] = {}
        h = _state(at(temporal, "layers"), lag)
        rl = [r for r in at(reach, "layers") if r]
        if multi_loss and rl:
            ratio = _med([r.get("ratio_key_to_loss") for r in rl])
            rate = _med([r.get("log_rate_per_step") for r in rl])
            gain = math.log(max(ratio, 1e-300)) if ratio is not None else None
            if gain is None and rate is not None and lag is not None:
                gain = rate * lag
            states["h"] = {
                "basis": "reach",
                "ratio_key_to_loss": ratio,
                "log_rate_per_step": rate,
                "log_gain_over_lag": gain,
                "profile": h,
                "verdict": _judge(gain),
            }
        elif h is not None:
            if multi_loss:
                h["basis"] = "profile (loss at every step: mixes local terms)"
            states["h"] = h
        c = _state(at(temporal, "cell_layers"), lag)
        if c is not None and multi_loss:
            # dL/dc_t mixes every later step's local term too; with the reach it is reported
            # beside, not judged (the reach at h_k already covers the cell path: dL_s/dh_{k-1}
            # and dL_s/dx_k share dL_s/dz_k, and z_k feeds c_k).
            c["basis"] = "profile (loss at every step: mixes local terms)"
            if "h" in states and states["h"]["basis"] == "reach":
                c["verdict"] = None
                states["h"]["cell_profile"] = c
                c = None
        if c is not None:
            states["c"] = c
        lam = _med([(e or {}).get("lambda_1") for e in at(lyap, "layers")])
        gains = [
            s["log_gain_over_lag"] for s in states.values() if s["log_gain_over_lag"] is not None
        ]
        basis = max(
            (k for k, s in states.items() if s["log_gain_over_lag"] is not None),
            key=lambda k: states[k]["log_gain_over_lag"],
            default=None,
        )
        gain = max(gains) if gains else None
        if gain is None and lam is not None and lag is not None:
            gain, basis = lam * lag, "lyapunov"
        blocks = spectrum.get(str(layer)) or {}
        out.append(
            {
                "layer": layer,
                "verdict": _judge(gain),
                "basis": basis,
                "log_gain_over_lag": gain,
                "lag": lag,
                "lambda_1": lam,
                "lambda_gain_over_lag": None if lam is None or lag is None else lam * lag,
                "sigma_max": max((b["sigma_max"] for b in blocks.values()), default=None),
                "states": states,
            }
        )
    return out


def _on_reach(layer: Mapping[str, Any]) -> bool:
    """Judged on the recall loss's reach (a task with a loss at every step)."""
    return ((layer.get("states") or {}).get("h") or {}).get("basis") == "reach"


def _credit(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    window = _window(summary, "credit")
    ratio = _med([w.get("ratio") for w in window])
    if ratio is None:
        return None
    decay = _med([w.get("decay") for w in window])
    # Low credit that did not fade with the lag (decay near 1) is inputs barely read at any
    # lag (a shut input gate, small input weights): weak, but not a gradient lost in time.
    faded = decay is None or decay < CREDIT_VANISHING
    return {
        "ratio": ratio,
        "decay": decay,
        "steps": len(window),
        "per_key_min": _med([min(w["per_key"]) for w in window if w.get("per_key")]),
        "verdict": "vanishing" if ratio < CREDIT_VANISHING and faded else "healthy",
        "weak_at_every_lag": ratio < CREDIT_VANISHING and not faded,
    }


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def outcome(
    summary: Mapping[str, Any], spec: Mapping[str, Any] | None = None, status: str | None = None
) -> dict[str, Any]:
    """solved / learning / at_baseline / diverged (when, after learning or not, what kind)."""
    spec = spec or {}
    base_val, base = _num(summary.get("baseline_loss_val")), _num(summary.get("baseline_loss"))
    baseline = base_val if base_val is not None else base
    final, best = _num(summary.get("final_val_loss")), _num(summary.get("best_val_loss"))
    first_bad = summary.get("first_nonfinite") or {}
    nan_events = int(summary.get("nan_events") or 0)
    overflows = int(summary.get("norm_overflow_events") or 0)
    # Against the better of the baseline and the best seen: an untrained net may start (and
    # stay) above the baseline; what matters is a loss that ran away from where it had been.
    ref = max((v for v in (baseline, best) if v is not None and math.isfinite(v)), default=None)
    blew_up = final is not None and (
        not math.isfinite(final) or (ref is not None and final > DIVERGED_LOSS_FACTOR * ref)
    )
    diverged = status == "diverged" or nan_events > 0 or blew_up
    beat, solved = summary.get("beat_baseline_at_step"), summary.get("solved_at_step")
    learned = best is not None and baseline is not None and best < LEARNING_FRACTION * baseline
    out: dict[str, Any] = {
        "result": "unknown",
        "final_val_loss": final,
        "best_val_loss": best,
        "baseline_loss": base,
        "baseline_loss_val": base_val,
        "beat_baseline_at_step": beat,
        "solved_at_step": solved,
        "divergence": None,
    }
    if diverged:
        step = first_bad.get("step", summary.get("halted_at_step"))
        total = int((spec.get("train") or {}).get("steps") or summary.get("steps_run") or 0)
        where = (first_bad.get("origin") or {}).get("where")
        if nan_events and where != "grad_norm":
            kind = "nonfinite"
        elif nan_events or overflows:
            kind = "norm_overflow"  # every gradient entry finite, their float32 sum of squares not
        else:
            kind = "loss_blow_up"
        before = [s for s in (beat, solved) if s is not None and (step is None or s < step)]
        after_learning = bool(before) and learned
        frac = None if step is None or not total else step / total
        out["result"] = "diverged"
        out["divergence"] = {
            "step": step,
            "fraction": frac,
            "after_learning": after_learning,
            "solved_before": solved is not None and (step is None or solved < step),
            "when": "late"
            if after_learning or (frac is not None and frac >= EARLY_FRACTION)
            else "immediate",
            "kind": kind,
            "origin": first_bad.get("origin"),
            "nan_events": nan_events,
            "norm_overflow_events": overflows,
            "nan_policy": (spec.get("train") or {}).get("nan_policy"),
            "loss_blew_up": blew_up,
        }
    elif solved is not None:
        out["result"] = "solved"
    elif learned:
        out["result"] = "learning"
    elif best is not None:
        out["result"] = "at_baseline"
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


def _transients(summary: Mapping[str, Any]) -> dict[str, Any]:
    top, med = _num(summary.get("max_grad_norm")), _num(summary.get("grad_norm_median"))
    spike = top / med if top is not None and med else None
    return {
        "max_grad_norm": top,
        "grad_norm_median": med,
        "spike_ratio": spike,
        "spike": spike is not None and spike > SPIKE_RATIO,
        "norm_overflow_events": summary.get("norm_overflow_events"),
        "clip_fraction": summary.get("clip_fraction"),
    }


def _suggest(
    verdict: str,
    spec: Mapping[str, Any],
    spectrum: Mapping[str, Any],
    result: Mapping[str, Any] | None = None,
    lag: int | None = None,
) -> list[dict]:
    """Mitigations from the science notes that fit what was seen and are not already set."""
    model, train = spec.get("model", {}), spec.get("train", {})
    init = model.get("init", {})
    cell = model.get("cell", "rnn")
    rnn = cell == "rnn"
    layers = model.get("num_layers", 1)
    orthogonal_param = model.get("recurrent_param", "none") == "orthogonal"
    flossing = train.get("flossing") is not None
    out: list[dict] = []

    def add(name: str, setting: dict[str, Any], why: str) -> None:
        out.append({"mitigation": name, "set": setting, "why": why})

    divergence = (result or {}).get("divergence") or {}
    if verdict == "vanishing":
        if rnn:
            add("lstm_or_gru", {"model.cell": "lstm"}, "gated cells keep an additive path")
        if rnn and model.get("activation") in ("tanh", "sigmoid"):
            add(
                "irnn",
                {"model.activation": "relu", "model.init.recurrent": "identity"},
                "relu with identity init (Le et al. 2015): Jacobian I where units are active",
            )
        if cell == "lstm" and not init.get("chrono"):
            add(
                "chrono_init",
                {"model.init.chrono": True},
                f"Tallec & Ollivier 2018: b_f ~ log U(1, T_max - 1), b_i = -b_f; "
                f"forget times up to the task's lag ({lag} steps)",
            )
        if cell == "lstm" and init.get("forget_bias") is None and not init.get("chrono"):
            add(
                "forget_bias",
                {"model.init.forget_bias": 1.0},
                "Gers et al. 2000, Jozefowicz et al. 2015: b_f = 1 keeps the cell path open",
            )
        if init.get("gain", 1.0) < 1 or init.get("recurrent") not in ("orthogonal", "identity"):
            add(
                "orthogonal_init",
                {"model.init.recurrent": "orthogonal", "model.init.gain": 1.0},
                "every singular value of W_hh equal to 1",
            )
        if rnn and not orthogonal_param:
            add(
                "orthogonal_param",
                {"model.recurrent_param": "orthogonal"},
                "W_hh kept orthogonal during training (Lezcano-Casado & Martinez-Rubio 2019)",
            )
        if model.get("norm", "none") == "none":
            add("layer_norm", {"model.norm": "layer"}, "keeps pre-activations out of saturation")
        if layers > 1 and not model.get("residual"):
            add("residual", {"model.residual": True}, "an identity path between stacked layers")
        if layers > 1:
            add("fewer_layers", {"model.num_layers": layers - 1}, "fewer Jacobians in the product")
        if rnn and not flossing:
            add(
                "gradient_flossing",
                {"train.flossing": {"weight": 0.1, "k": 4, "every": 1}},
                "Engelken 2023: pushes the top Lyapunov exponents toward 0",
            )
    elif verdict in ("exploding", "diverged"):
        late = divergence.get("when") == "late"
        clip = train.get("clip", {})
        if clip.get("mode", "none") == "none":
            add(
                "clip_norm",
                {"train.clip.mode": "norm"},
                "Pascanu et al. 2013: rescale the gradient when its norm passes a threshold",
            )
        if late:
            lr = (train.get("optimizer") or {}).get("lr", 1e-3)
            add(
                "lower_lr",
                {"train.optimizer.lr": lr / 10},
                "diverged after learning: the steps grew too large for the sharper region "
                "the solution sits in",
            )
            if (train.get("schedule") or {}).get("name", "constant") == "constant":
                add("lr_schedule", {"train.schedule.name": "cosine"}, "decay the steps late on")
        if init.get("gain", 1.0) > 1 or spectrum.get("exploding_possible"):
            add(
                "smaller_gain",
                {"model.init.recurrent": "orthogonal", "model.init.gain": 1.0},
                "sigma_max(W_hh) at or below 1/gamma cannot explode",
            )
        if rnn and not orthogonal_param:
            add(
                "orthogonal_param",
                {"model.recurrent_param": "orthogonal"},
                "every singular value of W_hh held at 1 while training",
            )
        if not train.get("l2"):
            add("l2", {"train.l2": 1e-4}, "weight regularisation holds W_hh's norm down")
        if rnn:
            add("lstm_or_gru", {"model.cell": "lstm"}, "bounded gates and cell updates")
        if model.get("norm", "none") == "none":
            add("layer_norm", {"model.norm": "layer"}, "normalised pre-activations")
        if rnn and not flossing and not late:
            add(
                "gradient_flossing",
                {"train.flossing": {"weight": 0.1, "k": 4, "every": 1}},
                "Engelken 2023: pushes the top Lyapunov exponents toward 0",
            )
    return out


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def diagnose(
    summary: Mapping[str, Any], spec: Mapping[str, Any] | None = None, status: str | None = None
) -> dict[str, Any]:
    """{"verdict", "reason", "worst_layer", "layers", "outcome", "evidence", "suggestions"}."""
    spec = spec or {}
    first_bad = summary.get("first_nonfinite") or {}
    spectrum = _spectrum_evidence(summary, spec)
    layers = _per_layer(summary, spec)
    credit = _credit(summary)
    result = outcome(summary, spec, status)
    multi_loss = (spec.get("task") or {}).get("name") in MULTI_LOSS_TASKS
    judged = [lay for lay in layers if lay["verdict"] is not None]
    lag = next((lay["lag"] for lay in layers if lay["lag"] is not None), None)
    worst: dict[str, Any] | None = None
    reason = ""
    if result["result"] == "diverged":
        verdict = "diverged"
        d = result["divergence"]
        when = "" if d["step"] is None else f" at step {d['step']}"
        reason = f"{d['kind'].replace('_', ' ')}{when} ({d['when']}"
        reason += ", after learning)" if d["after_learning"] else ")"
    elif exploding := [lay for lay in judged if lay["verdict"] == "exploding"]:
        verdict = "exploding"
        worst = max(exploding, key=lambda lay: lay["log_gain_over_lag"])
    elif vanishing := [lay for lay in judged if lay["verdict"] == "vanishing"]:
        verdict = "vanishing"
        worst = min(vanishing, key=lambda lay: lay["log_gain_over_lag"])
    elif credit is not None and credit["verdict"] == "vanishing":
        verdict = "vanishing"
        reason = (
            f"the credit at the inputs that matter is {_fmt(credit['ratio'])} of ideal "
            f"(threshold {CREDIT_VANISHING:g})"
        )
    elif not judged:
        verdict = "inconclusive"
        reason = "no layer could be judged (no profile, no exponents, or T < 3)"
    elif (
        multi_loss
        and not any(_on_reach(lay) for lay in judged)
        and (result["result"] == "at_baseline")
    ):
        verdict = "inconclusive"
        reason = (
            "a loss at every step: the h-profiles mix each step's local term with what "
            "propagated; without the reach instrument the recall loss's credit is unknown, "
            "and the task is at the baseline"
        )
    else:
        verdict = "healthy"
        worst = min(judged, key=lambda lay: lay["log_gain_over_lag"])
    if worst is not None:
        g = worst["log_gain_over_lag"]
        reason = (
            f"layer {worst['layer']} ({worst['basis']}): the gradient changes by "
            f"{_fmt(math.exp(max(g, -700)))} over the {worst['lag']}-step lag the task needs"
        )
        if verdict == "vanishing":
            names = [lay["layer"] for lay in judged if lay["verdict"] == "vanishing"]
            reason += f" (threshold {VANISHING_GAIN:g}); vanishing layers {names}"
        elif verdict == "exploding":
            reason += f" (threshold {EXPLODING_GAIN:g})"
    temporal = _window(summary, "temporal_profile")
    last = temporal[-1] if temporal else {}
    shown = worst["layer"] if worst is not None else 0
    last_layers = last.get("layers") or []
    prof = last_layers[shown] if shown < len(last_layers) else None
    evidence: dict[str, Any] = {
        "profile_step": last.get("step"),
        "profile_layer": shown if prof else None,
        "ratio_first_last": prof and prof["ratio_first_last"],
        "log_rate_per_step": prof and prof.get("log_rate_robust", prof["log_rate_per_step"]),
        "effective_horizon": prof and prof["effective_horizon"],
        "seq_len": prof and prof["seq_len"],
        "lag": lag,
        "window_steps": [w.get("step") for w in temporal],
        "layers": last.get("layers"),
        "credit": credit,
        "transients": _transients(summary),
        "max_grad_norm": summary.get("max_grad_norm"),
        "nan_events": summary.get("nan_events", 0),
        "nan_step": first_bad.get("step", summary.get("halted_at_step")),
        "nan_origin": first_bad.get("origin"),
        "spectrum": spectrum,
        "thresholds": {
            "vanishing_gain": VANISHING_GAIN,
            "exploding_gain": EXPLODING_GAIN,
            "credit_vanishing": CREDIT_VANISHING,
            "learning_fraction": LEARNING_FRACTION,
            "diverged_loss_factor": DIVERGED_LOSS_FACTOR,
            "spike_ratio": SPIKE_RATIO,
            "window_steps": WINDOW_STEPS,
        },
    }
    return {
        "verdict": verdict,
        "reason": reason,
        "worst_layer": None if worst is None else worst["layer"],
        "layers": layers,
        "outcome": result,
        "evidence": evidence,
        "suggestions": _suggest(verdict, spec, spectrum, result, lag),
    }
