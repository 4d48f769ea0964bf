"""/v1/experiments/{id}/dynamics: the dynamics instruments' series as JSON, each
`{"steps": [...], "values": [...]}` and thinned by `every`, `max_points`, `from_step`,
`to_step` like the other trace routes."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from api.deps import Owner, SessionDep, Thinning
from api.responses import FastJSON
from core import series
from core.owned import get_experiment
from core.tables import SeriesChunk
from core.traces import concat, load_prefixed, load_series, rows

router = APIRouter(prefix="/v1/experiments", tags=["traces"])


def _vectors(thin: Thinning, chunks: list[SeriesChunk]) -> dict[str, list]:
    steps, values = rows(chunks)
    keep = thin.indices(steps)
    return {"steps": [steps[i] for i in keep], "values": [values[i] for i in keep]}


def _scalars(thin: Thinning, chunks: list[SeriesChunk]) -> dict[str, list]:
    steps, values = thin.apply(*concat(chunks))
    return {"steps": steps, "values": values}


def _by_layer(session: SessionDep, row: Any, group: str) -> dict[str, dict[str, list[SeriesChunk]]]:
    """group/{layer}[/{quantity}] -> {layer: {quantity or "": chunks}}."""
    out: dict[str, dict[str, list[SeriesChunk]]] = {}
    for name, chunks in sorted(load_prefixed(session, row, series.prefix(group)).items()):
        layer, *rest = series.keys(name, group)
        out.setdefault(layer, {})["/".join(rest)] = chunks
    return out


def _last_window(summary: dict[str, Any], key: str) -> dict[str, Any]:
    window = ((summary.get(key) or {}).get("window")) or [{}]
    return window[-1]


@router.get("/{experiment_id}/dynamics")
def read_dynamics(
    owner: Owner, experiment_id: str, session: SessionDep, thin: Annotated[Thinning, Depends()]
) -> FastJSON:
    """A group is `{}` (or `credit` has null members) when its instrument was off or has not
    recorded yet.

    - `credit`: `vector` (||dL/dx|| at each key input: adding's two marked values, copy's 10
      symbol steps; digits: every input step) and `ratio` (to ideal credit assignment; none for
      digits), at instrumented steps; `key_steps` (of the last finished window, else null).
    - `reach[layer]` (copy): `lags` (over lag 0.. the first recall step, the recall terms'
      ||dL_s/dh_{s-lag}||), `matrix` (||dL_s/dh_{s-lag}|| for `lags` x `terms`, row-major,
      null where the lag passes the start), `w_hh_split` (Pascanu's split of dL/dW_hh over the
      lag bins `split_bins`); the lags, terms and bins come from the summary (null until the run
      ends).
    - `lyapunov[layer]`: the top-k finite-time Lyapunov exponents (natural log per step).
    - `conditioning[layer]`: `sigma_max`, `sigma_min` of dh_{T-1}/dh_{T-1-lag} over `lags`.
    - `cell_temporal[layer]` (lstm): ||dL/dc_t|| for every t.
    - `gates[layer]` (lstm): `forget_mean`, `forget_near_1` (> 0.95), `forget_near_0` (< 0.05).
    """
    row = get_experiment(session, experiment_id, owner)
    summary = row.summary or {}
    credit = load_series(session, row, [series.CREDIT, series.CREDIT_RATIO])
    out: dict[str, Any] = {
        "credit": {
            "vector": _vectors(thin, credit[series.CREDIT]) if credit[series.CREDIT] else None,
            "ratio": _scalars(thin, credit[series.CREDIT_RATIO])
            if credit[series.CREDIT_RATIO]
            else None,
            "key_steps": _last_window(summary, "credit").get("key_steps"),
        }
    }
    reach = summary.get("reach") or {}
    out["reach"] = {
        layer: {
            "lags": _vectors(thin, q[""]) if "" in q else None,
            "matrix": {
                **(_vectors(thin, q["matrix"]) if "matrix" in q else {"steps": [], "values": []}),
                "lags": reach.get("lags"),
                "terms": reach.get("terms"),
            },
            "w_hh_split": {
                **(_vectors(thin, q["w_hh_split"]) if "w_hh_split" in q else {}),
                "bins": reach.get("split_bins"),
            },
        }
        for layer, q in _by_layer(session, row, series.REACH).items()
    }
    out["lyapunov"] = {
        layer: _vectors(thin, q[""])
        for layer, q in _by_layer(session, row, series.LYAPUNOV).items()
    }
    out["conditioning"] = {}
    for layer, q in _by_layer(session, row, series.CONDITIONING).items():
        entry: dict[str, Any] = {k: _vectors(thin, c) for k, c in sorted(q.items())}
        width = next((c[0].width for c in q.values() if c), 0)
        entry["lags"] = series.conditioning_lags(width)
        out["conditioning"][layer] = entry
    out["cell_temporal"] = {
        layer: _vectors(thin, q[""])
        for layer, q in _by_layer(session, row, series.CELL_TEMPORAL).items()
    }
    out["gates"] = {
        layer: {k: _scalars(thin, c) for k, c in sorted(q.items())}
        for layer, q in _by_layer(session, row, series.GATES).items()
    }
    return FastJSON(out)
