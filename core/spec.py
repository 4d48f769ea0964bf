"""The specs a client sends. `ExperimentCreate` is the experiment spec: every field has a default
(`{}` is valid), every size has a documented maximum, and unknown fields are errors."""

import difflib
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import FieldRefusal
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


class SplitSpec(Strict):
    val: float = Field(0.2, gt=0, lt=1, description="held-out fraction of the sequences")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="the split's own seed, not the run's")


class SolvedSpec(Strict):
    """When a run on an uploaded dataset counts as solved: one of the two."""

    val_accuracy: float | None = Field(None, gt=0, le=1, description="at least this")
    val_loss: float | None = Field(None, gt=0, description="below this")

    @model_validator(mode="after")
    def _one_rule(self) -> "SolvedSpec":
        if (self.val_accuracy is None) == (self.val_loss is None):
            raise ValueError("give exactly one of val_accuracy, val_loss")
        return self


class DatasetTask(Strict):
    """An uploaded dataset (POST /v1/datasets) by id; its T and F come from the upload."""

    name: Literal["dataset"] = "dataset"
    id: str = Field(min_length=1, max_length=36)
    readout: Literal["last", "every"] = Field(
        "last", description="the answer at each sequence's last step, or at every step"
    )
    split: SplitSpec = SplitSpec()
    normalize: bool = Field(True, description="per feature, from the training split only")
    key_steps: list[Annotated[int, Field(ge=0, lt=MAX_SEQ_LEN)]] | None = Field(
        None, max_length=MAX_SEQ_LEN, description="the inputs that matter; default every step"
    )
    solved: SolvedSpec | None = Field(None, description="default: never reported solved")


TASK_MODELS = (AddingTask, CopyTask, DigitsTask, DatasetTask)
TASK_NAMES = frozenset(m.model_fields["name"].default for m in TASK_MODELS)
TaskSpec = Annotated[AddingTask | CopyTask | DigitsTask | DatasetTask, Field(discriminator="name")]
Task = AddingTask | CopyTask | DigitsTask | DatasetTask

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
    forget_bias: float | None = Field(
        None,
        ge=-20,
        le=20,
        description="lstm only: the effective forget-gate bias b_f (b_ih + b_hh; set in b_ih, "
        "b_hh's forget block zero). Gers et al. 2000, Jozefowicz et al. 2015: 1",
    )
    chrono: bool = Field(
        False,
        description="lstm only: chrono initialisation (Tallec & Ollivier 2018): effective "
        "b_f ~ log U(1, T_max - 1) per unit, b_i = -b_f, T_max the task's sequence length",
    )


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
    recurrent_param: Literal["none", "orthogonal"] = Field(
        "none",
        description="rnn only: 'orthogonal' keeps W_hh orthogonal during training "
        "(torch.nn.utils.parametrizations.orthogonal; works on the fused nn.RNN); every "
        "singular value 1, so init.gain must be 1",
    )

    @model_validator(mode="after")
    def _mitigations_fit_the_cell(self) -> "ModelSpec":
        if self.cell != "lstm" and (self.init.forget_bias is not None or self.init.chrono):
            name = "init.chrono" if self.init.chrono else "init.forget_bias"
            raise FieldRefusal(name, f"{name} applies to cell 'lstm' only, not '{self.cell}'")
        if self.init.chrono and self.init.forget_bias is not None:
            raise FieldRefusal(
                "init.forget_bias",
                "init.chrono sets the forget bias itself: leave init.forget_bias unset",
            )
        if self.recurrent_param == "orthogonal":
            if self.cell != "rnn":
                raise FieldRefusal(
                    "recurrent_param",
                    f"recurrent_param 'orthogonal' applies to cell 'rnn' only, not '{self.cell}'",
                )
            if self.init.gain != 1.0:
                raise FieldRefusal(
                    "init.gain",
                    "recurrent_param 'orthogonal' holds every singular value at 1: "
                    "init.gain must be 1",
                )
        return self

    @model_validator(mode="after")
    def _activation_for_rnn_only(self) -> "ModelSpec":
        if self.cell == "rnn":
            if self.activation is None:
                self.activation = "tanh"
        elif self.activation is not None:
            raise FieldRefusal(
                "activation", f"activation applies to cell 'rnn' only, not '{self.cell}'"
            )
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
            raise FieldRefusal("nesterov", "nesterov needs optimizer 'sgd' with momentum > 0")
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


class FlossingSpec(Strict):
    """Gradient flossing (Engelken, NeurIPS 2023): on every `every`-th step, `weight` x the sum
    of the squares of the top-k Lyapunov exponents of each layer (QR estimate along the step's
    own trajectory, example 0, differentiable) is added to the loss, pushing them toward 0."""

    weight: float = Field(0.1, gt=0, le=100)
    k: int = Field(4, ge=1, le=64, description="exponents per layer (at most hidden_size)")
    every: int = Field(1, ge=1, le=10_000, description="on every n-th training step")


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
    flossing: FlossingSpec | None = Field(None, description="rnn cells only; see FlossingSpec")


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
        description="the costly ones (lyapunov, reach, the spectral radius) run every n-th"
        " instrumented step",
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

    @model_validator(mode="after")
    def _flossing_fits_the_model(self) -> "ExperimentCreate":
        f = self.train.flossing
        if f is not None and self.model.cell != "rnn":
            raise FieldRefusal(
                "train.flossing",
                f"train.flossing applies to cell 'rnn' only, not '{self.model.cell}'",
            )
        if f is not None and f.k > self.model.hidden_size:
            raise FieldRefusal(
                "train.flossing.k", "train.flossing.k must be at most model.hidden_size"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _task_defaults_to_adding(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("task"), dict):
            data = {**data, "task": {"name": "adding", **data["task"]}}
        return data


@dataclass(frozen=True)
class TaskShape:
    """What the network reads: T steps of F features. An uploaded dataset's shape is in its
    row, not in the spec, so the API looks it up and hands it to the estimates."""

    seq_len: int
    features: int


BUILTIN_FEATURES = {"adding": 2, "copy": 10}


def task_shape(task: Task, dataset: TaskShape | None = None) -> TaskShape:
    if task.name == "dataset":
        if dataset is None:
            raise ValueError("an uploaded dataset's shape is read from its row")
        return dataset
    if task.name == "digits":
        return TaskShape(seq_len_of(task), 8 if task.read == "rows" else 1)
    return TaskShape(seq_len_of(task), BUILTIN_FEATURES[task.name])


MAX_NOTE_LEN = 10_000


class ExperimentUpdate(Strict):
    """PATCH /v1/experiments/{id}: what a user may change after submitting; a field left out
    stays as it is, `null` clears the name or the note."""

    name: str | None = Field(None, max_length=200)
    tags: list[Annotated[str, Field(min_length=1, max_length=50)]] | None = Field(
        None, max_length=20, description="the whole list: it replaces the tags"
    )
    note: str | None = Field(None, max_length=MAX_NOTE_LEN, description="free text")

    @field_validator("name", "note")
    @classmethod
    def _no_nul(cls, text: str | None) -> str | None:
        if text is not None and "\x00" in text:
            raise ValueError("a NUL character cannot be stored")
        return text

    @field_validator("tags")
    @classmethod
    def _no_nul_tags(cls, tags: list[str] | None) -> list[str] | None:
        if tags is not None and any("\x00" in t for t in tags):
            raise ValueError("a NUL character cannot be stored")
        return tags


GATE_BLOCKS = {"rnn": 1, "lstm": 4, "gru": 3}


def seq_len_of(task: AddingTask | CopyTask | DigitsTask) -> int:
    """Length of the input sequence the network reads (built-in tasks)."""
    if task.name == "adding":
        return task.seq_len
    if task.name == "copy":
        # 10 symbols, seq_len - 1 blanks, the delimiter, 10 blanks to answer in
        return task.seq_len + 20
    return 8 if task.read == "rows" else 64


def estimated_cost(spec: ExperimentCreate, dataset: TaskShape | None = None) -> float:
    """steps x batch x T x gate blocks x hidden x (hidden x layers + F): the recurrent
    multiply-adds plus the first layer's input projection (which an upload with many features
    makes dominant). `dataset`: the uploaded dataset's shape, for task `dataset`."""
    gates = GATE_BLOCKS[spec.model.cell]
    m, t = spec.model, spec.train
    shape = task_shape(spec.task, dataset)
    per_step = m.hidden_size * (m.hidden_size * m.num_layers + shape.features)
    return float(t.steps * t.batch_size * shape.seq_len) * gates * per_step


# The held-out set (worker/datasets/base.py: VAL_SIZE) is evaluated in chunks of about
# VAL_CHUNK_ELEMENTS hidden-state entries on a GPU, 16 to 1024 examples a chunk. On the CPU
# fewer, VAL_CHUNK_ELEMENTS_CPU: with glibc's own allocator (train() in a user's process)
# large chunks' blocks are mmapped and faulted in anew each chunk, and the 4096 examples of
# lstm 2 x 128, T = 100 took 0.98 s in chunks of 64 against 1.48 s in 512; with freed memory
# kept (the worker) the size hardly matters, 0.93 against 0.91 s (bench/cpu_kernels.py).
VAL_SIZE = 4096
VAL_CHUNK_ELEMENTS = 2**23
VAL_CHUNK_ELEMENTS_CPU = 3 * 2**20
MAX_INPUT_SIZE = 10  # the widest task input (copy: 8 symbols, blank, delimiter)


def validation_chunk_size(model: ModelSpec, seq_len: int, on_cpu: bool) -> int:
    """Examples a validation chunk holds: its hidden states (and an lstm's cells) in budget."""
    per_example = (
        seq_len * model.hidden_size * model.num_layers * (2 if model.cell == "lstm" else 1)
    )
    budget = VAL_CHUNK_ELEMENTS_CPU if on_cpu else VAL_CHUNK_ELEMENTS
    return max(16, min(1024, budget // max(per_example, 1)))


def validation_chunk(spec: ExperimentCreate, dataset: TaskShape | None = None) -> int:
    """Examples the validation forward pass holds at once."""
    seq_len = task_shape(spec.task, dataset).seq_len
    return validation_chunk_size(spec.model, seq_len, spec.train.device == "cpu")


# Peak floats a worker holds per (example x time step x unit x layer), fitted to measured peaks
# with a margin (bench/worker_memory.py; tests/worker/test_memory_budget.py holds
# measured <= estimate <= 3 x measured). Training: the activations autograd keeps, their
# gradients, the temporal adjoint's recomputed gates; per training example. Validation: the
# held-out set's forward pass without autograd, a chunk at a time; per example of a chunk.
# "loop": layers run as a python loop over time (norm cells, activations with no fused
# kernel), which keep every step's intermediates. Measured with every instrument on (floats
# an element, training / validation a chunk's example), fused: rnn 6.5 / 4.5,
# lstm 15.2 / 3.7, gru 17.4 / 6.7; loop: rnn 17.1 / 5.2, lstm 39.4 / 16.5, gru 36.2 / 8.2
# (layer norm; an rnn with no fused activation 15.5 / 4.0). The factors below are about
# 1.25 times these.
TRAIN_FLOATS = {"rnn": 8.0, "lstm": 18.5, "gru": 21.0}
TRAIN_FLOATS_LOOP = {"rnn": 20.0, "lstm": 66.0, "gru": 42.0}
VAL_FLOATS = {"rnn": 5.6, "lstm": 4.6, "gru": 8.4}
VAL_FLOATS_LOOP = {"rnn": 6.5, "lstm": 20.6, "gru": 10.3}
FUSED_ACTIVATIONS = ("tanh", "relu")
JACOBIAN_BLOCK = 32  # step Jacobians the lyapunov instrument builds at a time
MAX_LAG = 64  # the longest lag of its conditioning series


def estimated_memory(spec: ExperimentCreate, dataset: TaskShape | None = None) -> int:
    """Peak bytes a worker needs for `spec` beyond the interpreter and torch themselves: the
    training batch's activations and gradients (batch x T x hidden x layers, a factor per
    cell), the instruments' buffers and the adjoint, the validation batch, and the weights
    with their gradients and optimiser state."""
    m, t = spec.model, spec.train
    size = 8 if t.dtype == "float64" else 4
    looped = m.norm != "none" or (m.cell == "rnn" and m.activation not in FUSED_ACTIVATIONS)
    train_floats = (TRAIN_FLOATS_LOOP if looped else TRAIN_FLOATS)[m.cell]
    val_floats = (VAL_FLOATS_LOOP if looped else VAL_FLOATS)[m.cell]
    shape = task_shape(spec.task, dataset)
    elements = shape.seq_len * m.hidden_size * m.num_layers  # per example
    weights = GATE_BLOCKS[m.cell] * m.hidden_size * (2 * m.hidden_size + 2) * m.num_layers
    # Training also holds about one layer's worth more whatever the depth (the top output's
    # gradient, the head, the input-gradient instrument): measured a + c per layer with c
    # close to a (gru: 10.6 x layers + 13.5), so the layers are counted once more.
    floats = (
        t.batch_size * elements * (m.num_layers + 1) / m.num_layers * train_floats
        + validation_chunk(spec, dataset) * elements * val_floats
        # the held-out inputs, all of them
        + VAL_SIZE * shape.seq_len * max(MAX_INPUT_SIZE, shape.features)
        + 6 * weights  # weights, gradients, two optimiser moments, the update ratio's copy
    )
    state = m.hidden_size * (2 if m.cell == "lstm" else 1)  # the state a step Jacobian maps
    if "lyapunov" in spec.instrument.on:
        floats += 3 * JACOBIAN_BLOCK * state**2  # a block of step Jacobians and its products
    if getattr(t, "flossing", None) is not None:
        # differentiable exponents: every step's Jacobian kept for the backward pass
        floats += 2 * task_shape(spec.task, dataset).seq_len * state**2 * m.num_layers
    return int(size * floats)


def instrumented_steps(spec: ExperimentCreate) -> int:
    """Steps at which the instruments record: every `instrument.every`-th, and the last."""
    return -(-spec.train.steps // spec.instrument.every) + 1


def estimated_trace_bytes(spec: ExperimentCreate, dataset: TaskShape | None = None) -> int:
    """Bytes of stored series a run writes (8 for a step, 8 a value): loss (and accuracy) and
    the clipping flag at every step; at every instrumented step the learning rate, the global
    and per-parameter gradient norms, the update ratios and weight norms, the spectrum and
    saturation per layer and gate block, and the temporal profile (T values per layer); the
    validation loss and accuracy."""
    m, t = spec.model, spec.train
    layers, gates, on = m.num_layers, GATE_BLOCKS[m.cell], spec.instrument.on
    parameters = 4 * layers + 2 + (4 * layers if m.norm != "none" else 0)
    per_step = 3  # loss, accuracy, clip/fired
    per_instrumented = 3 + parameters  # lr, grad_norm_total, clip/after, grad/<param>
    if "update_ratio" in on:
        per_instrumented += 2 * parameters
    if "spectrum" in on:  # sigma_max here; the radius with the dynamics below
        per_instrumented += layers * gates
    if "saturation" in on:
        per_instrumented += layers * (gates + 1)
    if "gates" in on:
        per_instrumented += 3 * layers
    seq = task_shape(spec.task, dataset).seq_len
    profile = layers * seq if "temporal" in on else 0
    vectors = (profile + layers) if profile else 0
    if "credit" in on:  # the input-gradient profile (T values at most) and its ratio
        per_instrumented += 1
        vectors += seq
    total = instrumented_steps(spec) * (16 * per_instrumented + 8 * vectors)
    dynamics = -(-instrumented_steps(spec) // spec.instrument.dynamics_every)
    if "spectrum" in on:  # the radius per layer and block, and at the last step
        total += 16 * (dynamics + 1) * layers * gates
    if "lyapunov" in on:  # per layer: k exponents and two conditioning vectors over the lags
        lags = min(seq, MAX_LAG).bit_length()
        total += dynamics * layers * (16 * 3 + 8 * (64 + 2 * lags))
    validations = t.steps // spec.instrument.val_every + 1
    return 16 * (t.steps * per_step + validations * 2) + total


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


def _model_at(path: list[Any]) -> type[BaseModel] | None:
    """The spec model at a client's path (`["model", "init"]` -> InitSpec), or None."""
    model: Any = ExperimentCreate
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        model = _model_of(field.annotation)
        if model is None:
            return None
    return model


def _model_of(annotation: Any) -> Any:
    """A BaseModel inside an annotation (Optional, Annotated, lists of one); for the task
    union, None (which task is meant is not known from a path alone)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    models = [m for a in get_args(annotation) if (m := _model_of(a)) is not None]
    return models[0] if len(models) == 1 else None


def user_path(loc: list[Any]) -> list[Any]:
    """A pydantic error location as the client wrote it: a tagged union puts the tag in the
    location (`task.adding.seq_len`), which the client never wrote (`task.seq_len`)."""
    return [
        p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] == "task" and p in TASK_NAMES)
    ]


def suggestion(path: list[Any]) -> str | None:
    """The known field closest to an unknown one at the end of `path`, if one is close."""
    if not path or not isinstance(path[-1], str):
        return None
    parent = path[:-1]
    if parent == ["task"]:
        known = sorted({f for m in TASK_MODELS for f in m.model_fields})
    else:
        model = _model_at(parent)
        known = list(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(path[-1], known, n=1, cutoff=0.6)
    return ".".join([*map(str, parent), close[0]]) if close else None
