"""External runs: what `gradlab.watch` sends from a user's own training loop, as request specs,
and the checks and conversions the API makes before core/lifecycle.py and core/traces.py store
it. An external run is an experiment with `source = "external"`: created `running` by its
client, fed batches in the packed trace format the workers write (int64 steps and float64
values, little-endian, `width` values a step, base64 in JSON), finished by the client with a
summary the diagnosis reads, and `failed` by the reconciler when the client stops beating."""

from __future__ import annotations

import base64
import binascii
import re
from array import array
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.diagnosis import profile_evidence
from core.errors import invalid_field
from core.spec import NotifySpec

SOURCE = "external"
MAX_BATCH_BYTES = 16 * 1024 * 1024  # one upload's body
MAX_SERIES_PER_BATCH = 2000
MAX_STEPS_PER_CHUNK = 100_000
MAX_WIDTH = 100_000
MAX_EVENTS_PER_BATCH = 1000
MAX_MODULES = 64
SERIES_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+(/[A-Za-z0-9_.:\-]+)*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExternalLayer(Strict):
    """One recurrent layer the client watches: the global layer index the series use
    (`temporal/{layer}`), the module it belongs to and its index inside a stacked module."""

    layer: int = Field(ge=0, le=10_000)
    module: str = Field(max_length=200)
    index: int = Field(0, ge=0, le=1000)
    cell: Literal["rnn", "lstm", "gru"]
    activation: str | None = Field(None, max_length=20)
    input_size: int = Field(ge=0, le=10**7)
    hidden_size: int = Field(ge=1, le=10**7)
    batch_first: bool = False


class ExternalRunCreate(Strict):
    """`POST /v1/experiments/external`: a run of the client's own loop."""

    name: str | None = Field(None, max_length=200)
    tags: list[Annotated[str, Field(min_length=1, max_length=50)]] = Field(
        default_factory=list, max_length=20
    )
    every: int = Field(10, ge=1, le=10_000, description="instrumented-step interval")
    total_steps: int = Field(0, ge=0, le=10**9, description="0 when the client does not know")
    layers: list[ExternalLayer] = Field(default_factory=list, max_length=MAX_MODULES * 8)
    config: dict[str, Any] | None = Field(None, description="the user's own settings, stored")
    client: dict[str, str] | None = Field(None, description="torch version, host, device")
    notify: NotifySpec | None = None


class SeriesUpload(Strict):
    name: str = Field(min_length=1, max_length=200)
    width: int = Field(1, ge=1, le=MAX_WIDTH)
    steps: str = Field(description="base64 of little-endian int64, one a step")
    values: str = Field(description="base64 of little-endian float64, width a step")


class EventUpload(Strict):
    step: int | None = Field(None, ge=0, le=2**31 - 1)
    kind: str = Field(min_length=1, max_length=40)
    detail: dict[str, Any] = Field(default_factory=dict)


class BatchUpload(Strict):
    """`POST /v1/experiments/{id}/batches`: batch number `seq` of the run (from 0); a batch
    whose number is already stored is answered `stored: false` and not stored again."""

    seq: int = Field(ge=0, le=2**31 - 1)
    step: int = Field(0, ge=0, le=2**31 - 1, description="the run's progress")
    series: list[SeriesUpload] = Field(default_factory=list, max_length=MAX_SERIES_PER_BATCH)
    events: list[EventUpload] = Field(default_factory=list, max_length=MAX_EVENTS_PER_BATCH)


class ExternalFinish(Strict):
    """`POST /v1/experiments/{id}/finish`: the final status and the client's summary."""

    status: Literal["succeeded", "diverged", "failed", "cancelled"] = "succeeded"
    step: int | None = Field(None, ge=0, le=2**31 - 1)
    summary: dict[str, Any] = Field(default_factory=dict)
    error: dict[str, Any] | None = None


def external_spec(body: ExternalRunCreate) -> dict[str, Any]:
    """What an external run stores as its spec: how it was watched, and its layers. `model`
    describes layer 0 in the service's own terms, which the diagnosis and the plots read."""
    first = body.layers[0] if body.layers else None
    model: dict[str, Any] = {}
    if first is not None:
        model = {
            "cell": first.cell,
            "hidden_size": first.hidden_size,
            "num_layers": len(body.layers),
        }
        if first.cell == "rnn":
            model["activation"] = first.activation
    return {
        "source": SOURCE,
        "name": body.name,
        "model": model,
        "layers": [layer.model_dump() for layer in body.layers],
        "instrument": {"every": body.every},
        "train": {"steps": body.total_steps},
        "config": body.config,
        "client": body.client,
        "notify": None if body.notify is None else body.notify.model_dump(mode="json"),
    }


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid_field(f"{field} is not base64", field, "not base64", "base64") from exc


def decode_series(i: int, s: SeriesUpload) -> tuple[list[int], bytes, bytes]:
    """(steps, packed steps, packed values) of the i-th series of a batch, checked: the name
    is a series name, the values hold `width` float64 per int64 step."""
    where = f"series.{i}"
    if not SERIES_NAME.match(s.name):
        raise invalid_field(
            f"{where}.name {s.name!r} is not a series name (keys joined by '/')",
            f"{where}.name",
            "not a series name",
            "value",
        )
    steps_raw, values_raw = _b64(s.steps, f"{where}.steps"), _b64(s.values, f"{where}.values")
    n, extra = divmod(len(steps_raw), 8)
    if extra or n == 0 or n > MAX_STEPS_PER_CHUNK:
        raise invalid_field(
            f"{where}.steps must hold 1 to {MAX_STEPS_PER_CHUNK} int64 (8 bytes each)",
            f"{where}.steps",
            "not a packed int64 array",
            "length",
        )
    if len(values_raw) != n * s.width * 8:
        raise invalid_field(
            f"{where}.values holds {len(values_raw)} bytes; {n} steps of width {s.width} need "
            f"{n * s.width * 8}",
            f"{where}.values",
            "length does not match steps x width",
            "length",
        )
    steps = array("q", steps_raw)
    if array("h", [1]).tobytes()[0] == 0:  # big-endian host: the wire is little-endian
        steps.byteswap()
    if min(steps) < 0 or max(steps) > 2**31 - 1:
        raise invalid_field(
            f"{where}.steps are training steps: 0 to 2^31 - 1",
            f"{where}.steps",
            "out of range",
            "range",
        )
    return steps.tolist(), steps_raw, values_raw


# Summary keys that hold one number (or null, or "nan"/"inf"/"-inf" as the service stores
# non-finite values): a client that sends anything else there gets a 422 naming the key.
NUMERIC_SUMMARY_KEYS = (
    "final_loss",
    "final_val_loss",
    "best_val_loss",
    "baseline_loss",
    "baseline_loss_val",
    "accuracy",
    "max_grad_norm",
    "grad_norm_median",
    "clip_fraction",
    "steps_per_second",
    "nan_events",
    "norm_overflow_events",
    "beat_baseline_at_step",
    "solved_at_step",
    "halted_at_step",
)
MAPPING_SUMMARY_KEYS = ("temporal_profile", "spectrum", "first_nonfinite", "lyapunov", "credit")


def check_summary(summary: dict[str, Any]) -> None:
    """422 naming the key when a client's summary holds what the diagnosis cannot read: a
    number that is not one, or a group that is not an object."""
    for key in NUMERIC_SUMMARY_KEYS:
        value = summary.get(key)
        if value is None or value in ("nan", "inf", "-inf"):
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            reason = f'summary.{key} must be a number (or null, or "nan"/"inf")'
            raise invalid_field(reason, f"summary.{key}", "not a number", "type")
    for key in MAPPING_SUMMARY_KEYS:
        if summary.get(key) is not None and not isinstance(summary[key], dict):
            reason = f"summary.{key} must be an object"
            raise invalid_field(reason, f"summary.{key}", "not an object", "type")
    for layer, blocks in (summary.get("spectrum") or {}).items():
        for block, values in (blocks if isinstance(blocks, dict) else {"": blocks}).items():
            if not isinstance(values, dict):
                where = f"summary.spectrum.{layer}.{block}".rstrip(".")
                raise invalid_field(f"{where} must be an object", where, "not an object", "type")


def with_evidence(summary: dict[str, Any]) -> dict[str, Any]:
    """The client sends its temporal profiles raw (`temporal_profile.first|last.layers`, and
    each `window` entry's `layers` and `cell_layers`: one list of T floats per layer); the
    service turns each into the evidence the diagnosis reads, with core.diagnosis's own
    function (one implementation for both kinds of run)."""
    out = dict(summary)
    tp = summary.get("temporal_profile")
    if not isinstance(tp, dict):
        return out

    def convert(snap: Any, keys: tuple[str, ...] = ("layers",)) -> Any:
        if not isinstance(snap, dict):
            return None
        done = dict(snap)
        for key in keys:
            if key in snap:
                profiles = snap[key] if isinstance(snap[key], list) else []
                done[key] = [_evidence(p) for p in profiles]
        return done

    window = tp.get("window") if isinstance(tp.get("window"), list) else []
    out["temporal_profile"] = {
        "first": convert(tp.get("first")),
        "last": convert(tp.get("last")),
        "window": [convert(w, ("layers", "cell_layers")) for w in window],
    }
    return out


def _evidence(profile: Any) -> dict[str, Any] | None:
    if not isinstance(profile, list) or not profile:
        return None
    values = [_number(v) for v in profile]
    return profile_evidence(values)


def _number(v: Any) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    return {"inf": float("inf"), "-inf": float("-inf")}.get(v, float("nan"))
