"""/v1/experiments/{id}/metrics, /gradients, /instruments: the stored traces as JSON, thinned
by `every`, `max_points`, `from_step`, `to_step`."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from api.binary import NPZ_RESPONSE, npz_response, wants_npz
from api.deps import Owner, SessionDep, Thinning
from api.responses import FastJSON
from core import series
from core.owned import get_experiment
from core.tables import SeriesChunk
from core.traces import concat, load_prefixed, load_series, rows

router = APIRouter(prefix="/v1/experiments", tags=["traces"])


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
    found = load_series(
        session,
        row,
        [series.LOSS, series.ACCURACY, series.VAL_LOSS, series.VAL_ACCURACY, series.LR],
    )
    if wants_npz(request):
        return npz_response(found, thin, "metrics")
    steps, loss = concat(found[series.LOSS])
    idx = thin.indices(steps)
    out: dict[str, Any] = {"steps": [steps[i] for i in idx], "loss": [loss[i] for i in idx]}
    if found[series.ACCURACY]:
        _, acc = concat(found[series.ACCURACY])
        out["accuracy"] = [acc[i] for i in idx]
    vsteps, vloss = thin.apply(*concat(found[series.VAL_LOSS]))
    out["validation"] = {"steps": vsteps, "loss": vloss}
    if found[series.VAL_ACCURACY]:
        out["validation"]["accuracy"] = thin.apply(*concat(found[series.VAL_ACCURACY]))[1]
    lr_steps, lr = thin.apply(*concat(found[series.LR]))
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
      `layers` is empty when the temporal instrument was off."""
    row = get_experiment(session, experiment_id, owner)
    found = load_series(session, row, [series.GRAD_NORM_TOTAL, series.CLIP_AFTER])
    if wants_npz(request):
        for group in (series.GRAD, series.TEMPORAL):
            found |= load_prefixed(session, row, series.prefix(group))
        return npz_response(found, thin, "gradients")
    steps, norms = concat(found[series.GRAD_NORM_TOTAL])
    idx = thin.indices(steps)
    params = {
        series.tail(name, series.GRAD): [vals[i] for i in idx]
        for name, chunks in sorted(load_prefixed(session, row, series.prefix(series.GRAD)).items())
        for vals in [concat(chunks)[1]]
    }
    after = dict(zip(*concat(found[series.CLIP_AFTER]), strict=True))
    layers = []
    for name, chunks in load_prefixed(session, row, series.prefix(series.TEMPORAL)).items():
        t_steps, t_rows = rows(chunks)
        keep = thin.indices(t_steps)
        layers.append(
            {
                "layer": int(series.keys(name, series.TEMPORAL)[0]),
                "steps": [t_steps[i] for i in keep],
                "values": [t_rows[i] for i in keep],
            }
        )
    return FastJSON(
        {
            "steps": [steps[i] for i in idx],
            "parameters": params,
            "global_norm": {
                "before_clip": [norms[i] for i in idx],
                "after_clip": [after.get(steps[i]) for i in idx],
            },
            "temporal": {
                "quantity": "grad_norm_hidden",
                "layers": sorted(layers, key=lambda d: d["layer"]),
            },
        }
    )


def _thinned(thin: Thinning, chunks: list[SeriesChunk]) -> dict[str, list]:
    steps, values = thin.apply(*concat(chunks))
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
      (gru): `sigma_max` (largest singular value of that block of W_hh) and `radius` (its
      spectral radius), at instrumented steps.
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
        found = load_series(session, row, [series.CLIP_FIRED, series.CLIP_AFTER])
        for group in groups:
            found |= load_prefixed(session, row, series.prefix(group))
        return npz_response(found, thin, "instruments")
    out: dict[str, Any] = {"spectrum": {}, "saturation": {}, "update_ratio": {}, "weight_norm": {}}
    for name, chunks in sorted(load_prefixed(session, row, series.prefix(series.SPECTRUM)).items()):
        layer, block, quantity = series.keys(name, series.SPECTRUM)
        out["spectrum"].setdefault(layer, {}).setdefault(block, {})[quantity] = _thinned(
            thin, chunks
        )
    for name, chunks in sorted(
        load_prefixed(session, row, series.prefix(series.SATURATION)).items()
    ):
        layer, kind = series.keys(name, series.SATURATION)
        out["saturation"].setdefault(layer, {})[kind] = _thinned(thin, chunks)
    for group in (series.UPDATE_RATIO, series.WEIGHT_NORM):
        for name, chunks in sorted(load_prefixed(session, row, series.prefix(group)).items()):
            out[group][series.tail(name, group)] = _thinned(thin, chunks)
    clip = load_series(session, row, [series.CLIP_FIRED, series.CLIP_AFTER])
    out["clipping"] = {}
    if clip[series.CLIP_FIRED] or clip[series.CLIP_AFTER]:
        fired = concat(clip[series.CLIP_FIRED])[1]
        out["clipping"] = {
            "fired": _thinned(thin, clip[series.CLIP_FIRED]),
            "after_clip": _thinned(thin, clip[series.CLIP_AFTER]),
            "fired_fraction": sum(fired) / len(fired) if fired else None,
        }
    return FastJSON(out)
