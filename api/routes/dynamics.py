"""/v1/experiments/{id}/dynamics: the dynamics instruments' series as JSON, each
`{"steps": [...], "values": [...]}` and thinned by `every`, `max_points`, `from_step`,
`to_step` like the other trace routes."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from api.deps import Owner, SessionDep, Thinning
from api.responses import FastJSON
from core import series
from core.owned import get_experiment
from core.traces import read_series

router = APIRouter(prefix="/v1/experiments", tags=["traces"])


Points = dict[str, tuple[list[int], list[Any]]]


def _points(found: Points, name: str) -> dict[str, list] | None:
    if name not in found:
        return None
    steps, values = found[name]
    return {"steps": steps, "values": values}


def _by_layer(session: SessionDep, row: Any, group: str, pick: Any) -> dict[str, Points]:
    """group/{layer}[/{quantity}] -> {layer: {quantity or "": (steps, values)}}, read bounded
    (only the points kept are decoded)."""
    out: dict[str, Points] = {}
    found = read_series(session, row, prefix=series.prefix(group), pick=pick)
    for name in sorted(found):
        layer, *rest = series.keys(name, group)
        out.setdefault(layer, {})["/".join(rest)] = found[name]
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
    pick = thin.window().pick
    credit = read_series(session, row, names=[series.CREDIT, series.CREDIT_RATIO], pick=pick)
    out: dict[str, Any] = {
        "credit": {
            "vector": _points(credit, series.CREDIT),
            "ratio": _points(credit, series.CREDIT_RATIO),
            "key_steps": _last_window(summary, "credit").get("key_steps"),
        }
    }
    reach = summary.get("reach") or {}
    out["reach"] = {
        layer: {
            "lags": _points(q, ""),
            "matrix": {
                **(_points(q, "matrix") or {"steps": [], "values": []}),
                "lags": reach.get("lags"),
                "terms": reach.get("terms"),
            },
            "w_hh_split": {
                **(_points(q, "w_hh_split") or {}),
                "bins": reach.get("split_bins"),
            },
        }
        for layer, q in _by_layer(session, row, series.REACH, pick).items()
    }
    out["lyapunov"] = {
        layer: _points(q, "") for layer, q in _by_layer(session, row, series.LYAPUNOV, pick).items()
    }
    out["conditioning"] = {}
    for layer, q in _by_layer(session, row, series.CONDITIONING, pick).items():
        entry: dict[str, Any] = {k: _points(q, k) for k in sorted(q)}
        width = next((len(values[0]) for _, values in q.values() if values), 0)
        entry["lags"] = series.conditioning_lags(width)
        out["conditioning"][layer] = entry
    out["cell_temporal"] = {
        layer: _points(q, "")
        for layer, q in _by_layer(session, row, series.CELL_TEMPORAL, pick).items()
    }
    out["gates"] = {
        layer: {k: _points(q, k) for k in sorted(q)}
        for layer, q in _by_layer(session, row, series.GATES, pick).items()
    }
    return FastJSON(out)
