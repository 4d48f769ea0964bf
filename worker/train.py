"""The training loop: a plain function of a spec, with no database and no Celery in it.

`train(spec, instruments)` builds the network and the task from the spec, trains, lets the
instruments watch, hands recorded batches to `on_flush` as it goes, and returns the result.
A run that produces NaN/Inf is a result (status `diverged`), not an exception."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from core.spec import ExperimentCreate, validation_chunk_size
from gradlab.instruments.closed_layer import closed_forward
from gradlab.instruments.norms import scaled_norms
from models import RecurrentNet, RecurrentOutput, init_recurrent_net
from models.init import init_lstm_gate_biases
from worker.datasets import SequenceTask, make_task
from worker.flossing import flossing_penalty
from worker.instruments.base import Batch, Instrument, Run, StepContext
from worker.nan_origin import locate_nonfinite
from worker.optim import lr_factor, make_optimizer, set_lr

MAX_CONSECUTIVE_SKIPS = 100  # skip_step gives up (status diverged) after this many in a row

Status = Literal["succeeded", "diverged", "cancelled"]


@dataclass
class TrainResult:
    status: Status
    summary: dict[str, Any]
    steps_run: int
    batch: Batch  # whatever was recorded after the last flush


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def configure_cuda(device: torch.device) -> None:
    """cuDNN settings for a run on a GPU. `benchmark`: a run's shapes (T, B, H) are fixed, so
    the autotuner's first-step cost buys the fastest RNN and GEMM algorithms for every later
    step. `deterministic` stays off (torch's default): cuDNN's RNN kernels are deterministic
    already, and forcing it would slow the GEMMs without making GPU runs equal to CPU runs
    (they never are: other kernels, other reduction orders). A worker runs one experiment at
    a time, so process-wide flags are this run's."""
    if device.type == "cuda":
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False


def build_model(spec: ExperimentCreate, task: SequenceTask) -> RecurrentNet:
    m = spec.model
    net = RecurrentNet(
        task.input_size,
        task.output_size,
        cell=m.cell,
        activation=m.activation,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        residual=m.residual,
        dropout=m.dropout,
        norm=m.norm,
    )
    # Initialise in the run's dtype: an orthogonal W_hh drawn in float32 and cast is
    # orthogonal only to ~1e-7, which a float64 run would see in its profiles.
    if spec.train.dtype == "float64":
        net = net.double()
    init_recurrent_net(net, m.init.recurrent, m.init.input, m.init.gain)
    if m.cell == "lstm":
        chrono = task.seq_len if m.init.chrono else None  # the task knows an upload's T
        init_lstm_gate_biases(net, m.init.forget_bias, chrono)
    if m.recurrent_param == "orthogonal":
        # After the init: registering keeps the current (orthogonal) W_hh as the start point.
        for layer in net.rnn:
            orthogonal(layer, "weight_hh_l0")
    return net


def forward(
    run: Run, x: Tensor, per_layer: bool = True, closed: bool = False
) -> tuple[RecurrentOutput, Tensor]:
    """per_layer=False lets a plain stack take torch's fused multi-layer kernel (`top` only);
    closed=True: the layers that have one take the closed-form backward, which leaves the
    total adjoints dL/dh_t for the instruments that read them."""
    out = run.model(x, per_layer=per_layer, layer_call=closed_forward if closed else None)
    pred = run.model.head(out.top[-1] if run.task.readout == "last" else out.top)
    return out, pred


def penalty(model: nn.Module, l1: float, l2: float) -> Tensor | None:
    """Explicit L1/L2 penalties on weight matrices (biases are left alone)."""
    weights = [p for p in model.parameters() if p.dim() >= 2]
    terms = []
    if l1:
        terms.append(l1 * sum(w.abs().sum() for w in weights))
    if l2:
        terms.append(l2 * sum(w.pow(2).sum() for w in weights))
    return sum(terms) if terms else None


def clip(
    params: list[Tensor], spec: ExperimentCreate, norm: Tensor, norm_value: float, peak: float
) -> bool:
    """Clip in place as the spec says; returns whether clipping changed anything. The
    decision reads the host copies of the global norm and the largest |gradient| (`peak`),
    fetched with the loss in the step's one host sync: no sync of its own."""
    c = spec.train.clip
    if c.mode == "norm":
        torch.nn.utils.clip_grads_with_norm_(params, c.max_norm, norm, foreach=True)
        return norm_value > c.max_norm
    if c.mode == "value":
        torch.nn.utils.clip_grad_value_(params, c.clip_value, foreach=True)
        return peak > c.clip_value
    return False


class Batches:
    """The training batches, drawn by the host generator (the same seed gives the same data
    on every device). On CUDA each batch is put in pinned memory and copied without blocking,
    one step ahead, so the copy overlaps the previous step's kernels."""

    def __init__(self, run: Run, gen: torch.Generator) -> None:
        self.run, self.gen = run, gen
        self.pin = run.device.type == "cuda"
        self.ahead: tuple[Tensor, Tensor] | None = None

    def _draw(self) -> tuple[Tensor, Tensor]:
        run = self.run
        x, y = run.task.batch(run.spec.train.batch_size, self.gen)
        if self.pin:
            x, y = x.pin_memory(), y.pin_memory()
        x = x.to(run.device, run.dtype, non_blocking=True)
        y = y.to(run.device, run.dtype if y.is_floating_point() else None, non_blocking=True)
        return x, y

    def next(self, more: bool) -> tuple[Tensor, Tensor]:
        """This step's batch; `more`: another step follows (draw its batch now, on CUDA)."""
        batch = self.ahead if self.ahead is not None else self._draw()
        self.ahead = self._draw() if self.pin and more else None
        return batch


class Validator:
    """Loss and accuracy on the task's fixed held-out set, evaluated in chunks (the sum of the
    chunks' losses weighted by their sizes: every loss here is a mean over examples); tracks
    the milestones. The best constant answer's loss on this very set (`baseline_val`) is what
    "beat the baseline" compares against: the theoretical baseline is its expectation only."""

    def __init__(self, run: Run) -> None:
        x, y = run.task.validation()
        self.x, self.y = x.to(run.device, run.dtype), y.to(run.device)
        if self.y.is_floating_point():
            self.y = self.y.to(run.dtype)
        self.size = x.shape[1]
        self.baseline_val = run.task.constant_baseline(y)
        self.chunk = validation_chunk_size(run.spec.model, x.shape[0], run.device.type == "cpu")
        self.best: float | None = None
        self.last: tuple[float, float | None] | None = None
        self.beat_baseline_at: int | None = None
        self.solved_at: int | None = None

    @torch.no_grad()
    def evaluate(self, run: Run) -> tuple[float, float | None]:
        run.model.eval()
        loss_sum, acc_sum, has_acc = 0.0, 0.0, True
        for s in range(0, self.size, self.chunk):
            xb = self.x[:, s : s + self.chunk]  # examples are dim 1 of x (T, B, I)
            # targets: (B, ...) for a read-out at the last step, (T, B) for one at every step
            yb = (
                self.y[:, s : s + self.chunk]
                if run.task.readout == "all"
                else self.y[s : s + self.chunk]
            )
            _, pred = forward(run, xb, per_layer=False)
            n = xb.shape[1]
            loss_sum += float(run.task.loss(pred, yb)) * n
            acc = run.task.accuracy(pred, yb)
            has_acc = acc is not None
            acc_sum += float(acc) * n if acc is not None else 0.0
        run.model.train()
        return loss_sum / self.size, (acc_sum / self.size if has_acc else None)

    def __call__(self, run: Run, step: int) -> None:
        loss, acc = self.evaluate(run)
        self.last = (loss, acc)
        run.recorder.record("val_loss", step, loss)
        if acc is not None:
            run.recorder.record("val_accuracy", step, acc)
        if math.isfinite(loss):
            self.best = loss if self.best is None else min(self.best, loss)
            if self.beat_baseline_at is None and loss < self.baseline_val:
                self.beat_baseline_at = step
            if self.solved_at is None and run.task.is_solved(loss, acc):
                self.solved_at = step


def train(
    spec: ExperimentCreate,
    instruments: Sequence[Instrument] = (),
    *,
    on_flush: Callable[[Batch, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    flush_every_steps: int = 200,
    flush_every_s: float = 2.0,
    task: SequenceTask | None = None,
) -> TrainResult:
    """`task`: the task already built (an uploaded dataset, which the runner reads from the
    database); default the spec's built-in task."""
    device = resolve_device(spec.train.device)
    configure_cuda(device)
    dtype = torch.float64 if spec.train.dtype == "float64" else torch.float32
    torch.manual_seed(spec.seed)
    task = task or make_task(spec.task)
    model = build_model(spec, task).to(device=device, dtype=dtype)
    model.flatten_for_cudnn()  # CUDA: one weight buffer for cuDNN's multi-layer kernel
    optimizer = make_optimizer(spec.train.optimizer, model.parameters())
    run = Run(spec, task, model, optimizer, device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    data_gen = torch.Generator().manual_seed(spec.seed)
    validate = Validator(run)
    batches = Batches(run, data_gen)
    for ins in instruments:
        ins.start(run)

    every = spec.instrument.every
    reads_adjoint = any(ins.reads_adjoint for ins in instruments)
    n_steps = spec.train.steps
    status: Status = "succeeded"
    nan_events = skipped = consecutive_skips = clipped_steps = 0
    halted_at: int | None = None
    last_flush_t, last_flush_step = time.perf_counter(), 0
    t0 = time.perf_counter()
    step = -1
    instrumented_so_far, dynamics_every = 0, spec.instrument.dynamics_every
    for step in range(n_steps):
        if should_stop is not None and should_stop():
            status = "cancelled"
            break
        run.instrumented = step % every == 0 or step == n_steps - 1
        run.dynamics = run.instrumented and instrumented_so_far % dynamics_every == 0
        instrumented_so_far += run.instrumented
        lr = spec.train.optimizer.lr * lr_factor(spec.train.schedule, step, n_steps)
        set_lr(optimizer, lr)
        if run.instrumented:
            run.recorder.record("lr", step, lr)
        x, y = batches.next(more=step + 1 < n_steps)

        floss = spec.train.flossing
        flossing_step = floss is not None and step % floss.every == 0
        # The instruments (and the flossing penalty) read every layer's sequence; the other
        # steps take the fused multi-layer kernel where the stack allows it.
        out, pred = forward(
            run,
            x,
            per_layer=run.instrumented or flossing_step,
            closed=run.instrumented and reads_adjoint,
        )
        loss = task.loss(pred, y)
        ctx = StepContext(step, out, pred.detach(), loss.detach(), x, y)
        for ins in instruments:
            ins.before_backward(run, ctx)
        extra = penalty(model, spec.train.l1, spec.train.l2)
        if flossing_step:
            term = floss.weight * flossing_penalty(model, out, floss.k)
            extra = term if extra is None else extra + term
        optimizer.zero_grad(set_to_none=True)
        (loss if extra is None else loss + extra).backward()

        grads = [p.grad for p in params if p.grad is not None]
        norm = ctx.grad_norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        acc = task.accuracy(ctx.pred, y)
        scalars = [loss.detach(), norm]
        if acc is not None:
            scalars.append(acc)
        if spec.train.clip.mode == "value":
            scalars.append(torch.nn.utils.get_total_norm(grads, norm_type=math.inf))
        # The step's one host sync (on CUDA the only one the loop makes): the NaN policy and
        # clipping decide on these before the optimiser moves.
        host = torch.stack([v.double() for v in scalars]).tolist()
        ctx.loss_value, ctx.grad_norm_value = host[0], host[1]
        ctx.accuracy = host[2] if acc is not None else None
        peak = host[-1] if spec.train.clip.mode == "value" else math.nan
        if math.isfinite(ctx.loss_value) and not math.isfinite(ctx.grad_norm_value):
            # Finite entries whose sum of squares overflowed: the scaled norm is the true one.
            scaled = scaled_norms(grads)
            if scaled is not None:
                norm = ctx.grad_norm = scaled[0]
                ctx.grad_norm_value, ctx.norm_overflow = float(norm), True
                run.recorder.event(step, "norm_overflow", grad_norm=ctx.grad_norm_value)
        ctx.finite = math.isfinite(ctx.loss_value) and math.isfinite(ctx.grad_norm_value)
        if not ctx.finite and not out.per_layer:
            # Locating the first non-finite value needs every layer's sequence: the same
            # forward again, per layer (the weights have not moved).
            with torch.no_grad():
                out = ctx.output = model(x)
        for ins in instruments:
            ins.after_backward(run, ctx)

        if ctx.finite:
            consecutive_skips = 0
            ctx.clipped = clip(params, spec, norm, ctx.grad_norm_value, peak)
            clipped_steps += ctx.clipped
            optimizer.step()
        else:
            nan_events += 1
            origin = locate_nonfinite(model, out, pred, loss)
            action = "halt" if spec.train.nan_policy == "halt" else "skip_step"
            consecutive_skips += 1
            if consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                action = "halt"
            run.recorder.event(
                step,
                "nonfinite",
                origin=origin,
                loss=ctx.loss_value,
                grad_norm=ctx.grad_norm_value,
                action=action,
            )
            ctx.skipped = True
            skipped += 1
        for ins in instruments:
            ins.after_step(run, ctx)

        if not ctx.finite and (
            spec.train.nan_policy == "halt" or consecutive_skips >= MAX_CONSECUTIVE_SKIPS
        ):
            status, halted_at = "diverged", step
            run.recorder.event(step, "halt", reason="non-finite loss or gradient")
            break
        if (step + 1) % spec.instrument.val_every == 0 or step == n_steps - 1:
            validate(run, step)
        now = time.perf_counter()
        if on_flush is not None and (
            step + 1 - last_flush_step >= flush_every_steps or now - last_flush_t >= flush_every_s
        ):
            on_flush(run.recorder.drain(), step + 1)
            last_flush_t, last_flush_step = now, step + 1

    steps_run = step + 1 if status != "cancelled" else step
    wall = time.perf_counter() - t0
    summary: dict[str, Any] = {}
    for ins in instruments:
        summary.update(ins.summary(run))
    val_loss, val_acc = validate.last if validate.last else (None, None)
    summary.update(
        final_val_loss=val_loss,
        best_val_loss=validate.best,
        baseline_loss=task.baseline_loss,
        baseline_loss_val=validate.baseline_val,
        val_size=validate.size,
        baseline_accuracy=task.baseline_accuracy,
        beat_baseline_at_step=validate.beat_baseline_at,
        solved_at_step=validate.solved_at,
        accuracy=val_acc,
        nan_events=nan_events,
        skipped_steps=skipped,
        halted_at_step=halted_at,
        clip_fraction=clipped_steps / max(steps_run, 1),
        steps_run=steps_run,
        wall_time_s=wall,
        steps_per_second=steps_run / wall if wall > 0 else None,
        device=str(device),
        dtype=spec.train.dtype,
        parameters=sum(p.numel() for p in params),
        torch_version=torch.__version__.split("+")[0],
        # Reruns are bit-identical only at the same thread count (reduction order).
        torch_threads=torch.get_num_threads(),
    )
    return TrainResult(status, summary, steps_run, run.recorder.drain())
