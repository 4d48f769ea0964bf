"""/v1/experiments/{id}/metrics, /gradients, /instruments: the stored traces as JSON, thinned
by `every`, `max_points`, `from_step`, `to_step`, and bounded: at most MAX_TRACE_POINTS points
a series and MAX_TRACE_VALUES values an answer, whatever is stored (core.traces.read_series
reads only the points kept)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from api.binary import NPZ_RESPONSE, npz_response, wants_npz
from api.deps import Owner, SessionDep, Thinning
from api.responses import FastJSON
from core import series
from core.owned import get_experiment
from core.settings import get_settings
from core.traces import at_steps, raw_prefixed, raw_series, read_series, series_mean

router = APIRouter(prefix="/v1/experiments", tags=["traces"])
NONE: tuple[list, list] = ([], [])
METRIC_SERIES = (series.LOSS, series.ACCURACY, series.VAL_LOSS, series.VAL_ACCURACY, series.LR)


@router.get("/{experiment_id}/metrics", responses=NPZ_RESPONSE)
def read_metrics(
    owner: Owner,
    experiment_id: str,
    session: SessionDep,
    thin: Annotated[Thinning, Depends()],
    request: Request,
) -> Response:
    """Training loss (and accuracy) per step; validation loss (and accuracy) where measured;
    the learning rate at the instrumented steps."""
    row = get_experiment(session, experiment_id, owner)
    if wants_npz(request):
        return npz_response(raw_series(session, row, METRIC_SERIES), thin, "metrics")
    found = read_series(session, row, names=METRIC_SERIES, pick=thin.window().pick)
    steps, loss = found.get(series.LOSS, NONE)
    out: dict[str, Any] = {"steps": steps, "loss": loss}
    if series.ACCURACY in found:
        out["accuracy"] = found[series.ACCURACY][1]
    vsteps, vloss = found.get(series.VAL_LOSS, NONE)
    out["validation"] = {"steps": vsteps, "loss": vloss}
    if series.VAL_ACCURACY in found:
        out["validation"]["accuracy"] = found[series.VAL_ACCURACY][1]
    lr_steps, lr = found.get(series.LR, NONE)
    out["lr"] = {"steps": lr_steps, "values": lr}
    return FastJSON(out)


@router.get("/{experiment_id}/gradients", responses=NPZ_RESPONSE)
def read_gradients(
    owner: Owner,
    experiment_id: str,
    session: SessionDep,
    thin: Annotated[Thinning, Depends()],
    request: Request,
) -> Response:
    """Gradients at the instrumented steps, thinned by `every`, `max_points`, `from_step`,
    `to_step` (applied to each series' own steps):

    - `steps`, `parameters` (name -> gradient L2 norm before clipping, one per step),
      `global_norm.before_clip` and `global_norm.after_clip` (aligned with `steps`; null where
      the step was not clipped-and-applied, e.g. a non-finite step that was skipped).
    - `temporal`: `{"quantity": "grad_norm_hidden", "layers": [{"layer", "steps", "values"}]}`
      where `values[i][t]` is ||dL/dh_t|| of that layer at its i-th instrumented step: the
      total derivative, every path through later time steps included (seq_len values a row).
      `layers` is empty when the temporal instrument was off. At most MAX_TRACE_VALUES values
      in all: past that, every layer keeps an evenly spaced share of its rows."""
    row = get_experiment(session, experiment_id, owner)
    if wants_npz(request):
        found = raw_series(session, row, [series.GRAD_NORM_TOTAL, series.CLIP_AFTER])
        for group in (series.GRAD, series.TEMPORAL):
            found |= raw_prefixed(session, row, series.prefix(group))
        return npz_response(found, thin, "gradients")
    window = thin.window()
    steps, norms = read_series(session, row, names=[series.GRAD_NORM_TOTAL], pick=window.pick).get(
        series.GRAD_NORM_TOTAL, NONE
    )
    after = dict(
        zip(
            *read_series(session, row, names=[series.CLIP_AFTER], pick=at_steps(steps)).get(
                series.CLIP_AFTER, NONE
            ),
            strict=True,
        )
    )
    grads = read_series(session, row, prefix=series.prefix(series.GRAD), pick=window.pick)
    params = {series.tail(name, series.GRAD): vals for name, (_, vals) in sorted(grads.items())}
    profiles = read_series(
        session,
        row,
        prefix=series.prefix(series.TEMPORAL),
        pick=window.pick,
        max_values=get_settings().max_trace_values,
    )
    layers = [
        {"layer": int(series.keys(name, series.TEMPORAL)[0]), "steps": t_steps, "values": rows}
        for name, (t_steps, rows) in profiles.items()
    ]
    return FastJSON(
        {
            "steps": steps,
            "parameters": params,
            "global_norm": {"before_clip": norms, "after_clip": [after.get(s) for s in steps]},
            "temporal": {
                "quantity": "grad_norm_hidden",
                "layers": sorted(layers, key=lambda d: d["layer"]),
            },
        }
    )


def _points(found: dict[str, tuple[list, list]], name: str) -> dict[str, list]:
    steps, values = found.get(name, NONE)
    return {"steps": steps, "values": values}


@router.get("/{experiment_id}/instruments", responses=NPZ_RESPONSE)
def read_instruments(
    owner: Owner,
    experiment_id: str,
    session: SessionDep,
    thin: Annotated[Thinning, Depends()],
    request: Request,
) -> Response:
    """The other instruments' series, each `{"steps": [...], "values": [...]}` and thinned by
    `every`, `max_points`, `from_step`, `to_step`; a group is `{}` when its instrument was off.

    - `spectrum[layer][block]` with blocks `hh` (rnn), `i`,`f`,`g`,`o` (lstm), `r`,`z`,`n`
      (gru): `sigma_max` (largest singular value of that block of W_hh) at instrumented
      steps, and `radius` (its spectral radius, a dense eigensolve) at every
      `instrument.dynamics_every`-th instrumented step and the last.
    - `saturation[layer]`: fractions over (time step, example, unit) at instrumented steps:
      `tanh` (|h| > 0.99), `sigmoid` (h < 0.01 or > 0.99), `dead_relu` (units zero for every
      example at every time step), or per gate for lstm (`i`,`f`,`g`,`o`) and gru (`r`,`z`,`n`).
    - `update_ratio[parameter]`: ||W_after - W_before|| / ||W_before|| across one optimiser
      step; `weight_norm[parameter]`: ||W|| after it (instrumented steps).
    - `clipping`: `fired` (1 or 0 at every applied step), `after_clip` (global gradient norm
      after clipping, instrumented steps), `fired_fraction` (over all applied steps, unthinned).
    """
    row = get_experiment(session, experiment_id, owner)
    if wants_npz(request):
        groups = (series.SPECTRUM, series.SATURATION, series.UPDATE_RATIO, series.WEIGHT_NORM)
        found = raw_series(session, row, [series.CLIP_FIRED, series.CLIP_AFTER])
        for group in groups:
            found |= raw_prefixed(session, row, series.prefix(group))
        return npz_response(found, thin, "instruments")
    pick = thin.window().pick
    out: dict[str, Any] = {"spectrum": {}, "saturation": {}, "update_ratio": {}, "weight_norm": {}}
    found = read_series(session, row, prefix=series.prefix(series.SPECTRUM), pick=pick)
    for name in sorted(found):
        layer, block, quantity = series.keys(name, series.SPECTRUM)
        out["spectrum"].setdefault(layer, {}).setdefault(block, {})[quantity] = _points(found, name)
    found = read_series(session, row, prefix=series.prefix(series.SATURATION), pick=pick)
    for name in sorted(found):
        layer, kind = series.keys(name, series.SATURATION)
        out["saturation"].setdefault(layer, {})[kind] = _points(found, name)
    for group in (series.UPDATE_RATIO, series.WEIGHT_NORM):
        found = read_series(session, row, prefix=series.prefix(group), pick=pick)
        for name in sorted(found):
            out[group][series.tail(name, group)] = _points(found, name)
    clip = read_series(session, row, names=[series.CLIP_FIRED, series.CLIP_AFTER], pick=pick)
    out["clipping"] = {}
    if clip:
        out["clipping"] = {
            "fired": _points(clip, series.CLIP_FIRED),
            "after_clip": _points(clip, series.CLIP_AFTER),
            "fired_fraction": series_mean(session, row, series.CLIP_FIRED),
        }
    return FastJSON(out)
