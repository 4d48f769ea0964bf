"""The specs a client sends. `ExperimentCreate` is the experiment spec: every field has a default
(`{}` is valid), every size has a documented maximum, and unknown fields are errors."""

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.webhooks import parse as parse_webhook_url

# Documented maxima (README, "The spec"). They keep one request from occupying a worker for days.
MAX_SEQ_LEN = 5000
MAX_HIDDEN = 1024
MAX_LAYERS = 8
MAX_STEPS = 100_000
MAX_BATCH = 1024


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AddingTask(Strict):
    """Two channels (value, marker); target is the sum of the two marked values."""

    name: Literal["adding"] = "adding"
    seq_len: int = Field(200, ge=2, le=MAX_SEQ_LEN)


class CopyTask(Strict):
    """10 symbols from 8, `seq_len` blanks, a delimiter; repeat the symbols after it."""

    name: Literal["copy"] = "copy"
    seq_len: int = Field(100, ge=1, le=MAX_SEQ_LEN, description="number of blanks (the delay)")


class DigitsTask(Strict):
    """scikit-learn's 8x8 digits as a sequence: rows (T=8) or pixels (T=64)."""

    name: Literal["digits"] = "digits"
    read: Literal["rows", "pixels"] = "pixels"
    permuted: bool = False


TaskSpec = Annotated[AddingTask | CopyTask | DigitsTask, Field(discriminator="name")]

Activation = Literal["tanh", "relu", "sigmoid", "leaky_relu", "elu", "linear"]
RecurrentInit = Literal[
    "orthogonal",
    "identity",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "normal",
    "default",
]
InputInit = Literal[
    "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "normal", "default"
]


class InitSpec(Strict):
    recurrent: RecurrentInit = "orthogonal"
    input: InputInit = "xavier_uniform"
    gain: float = Field(1.0, gt=0, le=10, description="orthogonal: every singular value")


class ModelSpec(Strict):
    cell: Literal["rnn", "lstm", "gru"] = "rnn"
    activation: Activation | None = Field(None, description="rnn only; default tanh")
    hidden_size: int = Field(128, ge=1, le=MAX_HIDDEN)
    num_layers: int = Field(1, ge=1, le=MAX_LAYERS)
    norm: Literal["none", "layer", "batch"] = Field(
        "none",
        description=(
            "normalisation inside the recurrence, of the input and recurrent pre-activations "
            "(and an lstm's cell state): 'layer' (Ba et al. 2016) per example over each gate "
            "block; 'batch' (Cooijmans et al. 2016) over the batch with statistics per time "
            "step, evaluated with per-step running statistics (steps beyond the trained "
            "length use the last). Either runs a python loop over time, not a fused kernel"
        ),
    )
    residual: bool = Field(False, description="h_l + h_(l-1) between stacked layers")
    dropout: float = Field(0.0, ge=0, lt=1, description="between stacked layers")
    init: InitSpec = InitSpec()

    @model_validator(mode="after")
    def _activation_for_rnn_only(self) -> "ModelSpec":
        if self.cell == "rnn":
            if self.activation is None:
                self.activation = "tanh"
        elif self.activation is not None:
            raise ValueError(f"activation applies to cell 'rnn' only, not '{self.cell}'")
        return self


class OptimizerSpec(Strict):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0, le=100)
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd and rmsprop")
    nesterov: bool = False
    weight_decay: float = Field(
        0.0,
        ge=0,
        le=1,
        description=(
            "L2 as weight decay, applied by the optimiser to every parameter (biases and norm "
            "gains included): adamw decays decoupled from the gradient, w -= lr * wd * w; sgd, "
            "adam and rmsprop add wd * w to the gradient (the gradient of (wd/2) ||w||^2), "
            "which adam/rmsprop then rescale. Not in the loss; see train.l2 for that"
        ),
    )

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "OptimizerSpec":
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        return self


class ClipSpec(Strict):
    mode: Literal["none", "norm", "value"] = "norm"
    max_norm: float = Field(1.0, gt=0)
    clip_value: float = Field(1.0, gt=0)


class ScheduleSpec(Strict):
    """Learning rate at update s (0-based) is optimizer.lr times a factor: a linear warm-up
    (s + 1) / warmup_steps for s < warmup_steps, then with u = s - warmup_steps:
    constant 1; step gamma ** (u // step_size); cosine (1 + cos(pi * u / (steps -
    warmup_steps))) / 2, from 1 down towards 0 at the last step."""

    name: Literal["constant", "cosine", "step"] = "constant"
    step_size: int = Field(1000, ge=1, le=MAX_STEPS, description="step: updates per decay")
    gamma: float = Field(0.1, gt=0, le=1, description="step: factor per decay")
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="linear warm-up first")


class TrainSpec(Strict):
    steps: int = Field(2000, ge=1, le=MAX_STEPS)
    time_limit_s: float | None = Field(
        None,
        gt=0,
        le=7 * 24 * 3600,
        description="stop (status failed, error time_limit) after this long; default and "
        "ceiling: the service's SOFT_TIME_LIMIT_S",
    )
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    optimizer: OptimizerSpec = OptimizerSpec()
    clip: ClipSpec = ClipSpec()
    l1: float = Field(
        0.0,
        ge=0,
        le=1,
        description="explicit penalty l1 * sum |w| added to the loss, over weight matrices only "
        "(biases and norm gains are left alone)",
    )
    l2: float = Field(
        0.0,
        ge=0,
        le=1,
        description="L2 as explicit penalty l2 * sum w^2 added to the loss, over weight "
        "matrices only; its gradient 2 * l2 * w goes through clipping and the optimiser like "
        "the loss's own. For L2 as weight decay see optimizer.weight_decay",
    )
    schedule: ScheduleSpec = ScheduleSpec()
    dtype: Literal["float32", "float64"] = "float32"
    nan_policy: Literal["halt", "skip_step"] = "halt"
    device: Literal["auto", "cpu", "cuda"] = "auto"


# The instruments a spec may switch on or off (loss, gradient norms and the first non-finite
# origin always run). worker/instruments/__init__.py maps each name to its class; a test holds
# the two equal, so a name accepted here is never silently not run.
OPTIONAL_INSTRUMENTS = (
    "temporal",
    "spectrum",
    "saturation",
    "update_ratio",
    "clipping",
    "gates",
    "credit",
    "lyapunov",
    "reach",
)
OptionalInstrument = Literal[OPTIONAL_INSTRUMENTS]


class InstrumentSpec(Strict):
    every: int = Field(10, ge=1, le=10_000, description="instrumented-step interval")
    val_every: int = Field(100, ge=1, le=100_000, description="validation interval")
    dynamics_every: int = Field(
        10,
        ge=1,
        le=10_000,
        description="the costly ones (lyapunov, reach) run every n-th instrumented step",
    )
    on: list[OptionalInstrument] = Field(
        default_factory=lambda: list(OPTIONAL_INSTRUMENTS),
        description="which instruments run beyond loss and gradient norms (always on); default all",
    )


NotifyEvent = Literal["finished", "nan", "exploding", "vanishing"]
MAX_URL_LEN = 2000


class NotifySpec(Strict):
    """Webhooks: POST a signed JSON body to `url` on each of `events`. `finished`: any terminal
    status, with the summary and diagnosis; `nan`: the first non-finite loss or gradient of an
    attempt, with its step and origin; `exploding`: the first finite step whose global gradient
    norm passes the diagnosis threshold (1e4), with the norm; `vanishing`: the first
    instrumented step whose temporal profile ratio p[0] / p[T-1] (layer 0) is below the
    diagnosis threshold (1e-3), with the ratio (needs the `temporal` instrument)."""

    url: str = Field(max_length=MAX_URL_LEN, description="http or https")
    events: list[NotifyEvent] = Field(default_factory=lambda: ["finished"], min_length=1)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        # The address check (no loopback or private hosts) needs DNS and a setting, so it is
        # made at submit time (core/webhooks.py), not here where every re-read would repeat it.
        if any(c.isspace() or not c.isprintable() for c in url):
            raise ValueError("the URL contains whitespace or control characters")
        # httpx's parser is the judge (core.webhooks.parse): a URL accepted here can be sent.
        parsed, reason = parse_webhook_url(url)
        if parsed is None:
            raise ValueError(reason)
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises on a port that is not a number in range)
        except ValueError as exc:
            raise ValueError(f"not a valid URL: {exc}") from exc
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials in the URL are not allowed; verify the signature")
        return url

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[str]) -> list[str]:
        return list(dict.fromkeys(events))


class ExperimentCreate(Strict):
    """The experiment spec."""

    name: str | None = Field(None, max_length=200)
    tags: list[Annotated[str, Field(min_length=1, max_length=50)]] = Field(
        default_factory=list, max_length=20
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    task: TaskSpec = Field(default_factory=AddingTask)
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    instrument: InstrumentSpec = InstrumentSpec()
    notify: NotifySpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _task_defaults_to_adding(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("task"), dict):
            data = {**data, "task": {"name": "adding", **data["task"]}}
        return data


def seq_len_of(task: AddingTask | CopyTask | DigitsTask) -> int:
    """Length of the input sequence the network reads."""
    if task.name == "adding":
        return task.seq_len
    if task.name == "copy":
        # 10 symbols, seq_len - 1 blanks, the delimiter, 10 blanks to answer in
        return task.seq_len + 20
    return 8 if task.read == "rows" else 64


def estimated_cost(spec: ExperimentCreate) -> float:
    """steps x batch x T x hidden^2 x layers x gate blocks: the multiply-adds that dominate."""
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[spec.model.cell]
    m, t = spec.model, spec.train
    return (
        float(t.steps * t.batch_size * seq_len_of(spec.task) * m.hidden_size**2)
        * m.num_layers
        * gates
    )


MAX_SWEEP_EXPERIMENTS = 200  # grid points x seeds in one sweep
MAX_GRID_FACTORS = 6
MAX_GRID_LEVELS = 20
MAX_SEEDS = 20


class SweepCreate(Strict):
    """A grid of specs: `base` (a partial spec), `grid` (dotted spec paths -> values; an object
    value is merged at that path; the path `variant` takes partial specs with a `label`), and
    `seeds`. Or `preset`: a built-in study (its base and grid; `seeds` may override)."""

    name: str | None = Field(None, max_length=200)
    preset: str | None = Field(None, max_length=100)
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[
        Annotated[str, Field(min_length=1, max_length=100)],
        Annotated[list[Any], Field(min_length=1, max_length=MAX_GRID_LEVELS)],
    ] = Field(default_factory=dict, max_length=MAX_GRID_FACTORS)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(
        None, min_length=1, max_length=MAX_SEEDS, description="default [0]"
    )
