"""Credit at the inputs that matter: at instrumented steps, ||dL/dx|| (over the batch and the
channels that carry the information) at each key input the task declares, and its ratio to
ideal credit assignment (series `credit`, a vector over key inputs, and `credit/ratio`).

- adding: the two marked values; ideal dL/dv_k = dL/dpred (the target is v_1 + v_2), so
  ratio = ||dL/dv_marked|| / (sqrt(2) ||dL/dpred||): 1 when the gradient reached both
  markers in full, ~0 when it did not.
- copy: the 10 symbol steps (every one-hot channel); ideal: as much gradient as the logits at
  the step each symbol is recalled, so ratio = ||dL/dx_{0..9}|| / ||dL/dlogits_{T-10..T-1}||.
- digits: no key inputs; `credit` is the profile ||dL/dx_t|| over every step, ratio None.
- dataset (uploaded): the spec's `key_steps` (default every step, the profile as digits),
  every channel; no ideal is known, so ratio and decay are None (the decay only qualifies a
  ratio, and the last step may get no credit at all: a lag).

Beside the ratio, `decay`: the key inputs' credit per key against the credit at the same
channels of the last input step (lag 0). A low ratio with a decay near 1 means the inputs are
barely read at any lag (a shut input gate, small input weights), not that the gradient faded
through time; only a low ratio that also decayed with the lag is vanishing.

dL/dx is the vector-Jacobian product of the first layer with the gradient its output received
(no other path leads from x to the loss): from the closed-form adjoint the temporal profile
computes (shared, not recomputed), dL/dx_t = dL/d(W_ih x_t) W_ih; for a layer without a
closed form, from the layer recomputed on the batch with x.requires_grad."""

from __future__ import annotations

from collections import deque
from typing import Any

import torch

from core.diagnosis import WINDOW_STEPS
from worker.instruments.adjoint import Points, preactivation_grads, total_adjoint
from worker.instruments.base import Instrument, Run, StepContext


def input_gradient(run: Run, ctx: StepContext, at: Points | None = None) -> torch.Tensor | None:
    """dL/dx (T, B, I), or at the points `at` only (K, B, I), from the first layer's retained
    output gradient: its closed-form adjoint's pre-activation gradients times W_ih (shared
    with the temporal profile), or for a layer without one, a vector-Jacobian product of the
    layer recomputed on x."""
    layer, h = run.model.rnn[0], ctx.output.layers[0]
    if h.grad is None or ctx.x is None:
        return None
    shared = total_adjoint(layer, ctx.x, h)
    if shared is not None:
        dz = preactivation_grads(layer, ctx.x, h, *shared, recurrent=False, at=at)
        return dz @ layer.weight_ih_l0.detach()  # (T or K, B, G*H) x (G*H, I)
    with torch.enable_grad():
        x = ctx.x.detach().requires_grad_()
        (again, _) = layer(x)
        (dx,) = torch.autograd.grad(again, x, h.grad)
    return dx if at is None else dx[at[0], at[1]]


def prediction_gradient(run: Run, ctx: StepContext) -> torch.Tensor:
    with torch.enable_grad():
        pred = ctx.pred.detach().clone().requires_grad_()
        (dpred,) = torch.autograd.grad(run.task.loss(pred, ctx.y), pred)
    return dpred


class Credit(Instrument):
    name = "credit"
    reads_adjoint = True

    def start(self, run: Run) -> None:
        self.window: deque[dict[str, Any]] = deque(maxlen=WINDOW_STEPS)

    def before_backward(self, run: Run, ctx: StepContext) -> None:
        # Only instrumented steps carry per-layer outputs (the others may run fused).
        if run.instrumented and (h := ctx.output.layers[0]).requires_grad:
            h.retain_grad()

    def after_backward(self, run: Run, ctx: StepContext) -> None:
        if not run.instrumented or ctx.x is None:
            return
        keys = run.task.key_inputs(ctx.x)
        ratio = decay = None
        if keys is None:
            if (dx := input_gradient(run, ctx)) is None:
                return
            per_key = dx.flatten(1).norm(dim=1)  # (T,): the profile over the input
            key_steps = list(range(dx.shape[0]))
        else:
            steps, channels = keys  # (K, B)
            cols = torch.arange(steps.shape[1], device=steps.device).expand_as(steps)
            if (dx := input_gradient(run, ctx, (steps, cols))) is None:  # (K, B, I)
                return
            per_key = dx[..., channels].flatten(1).norm(dim=1)  # (K,)
            ideal = run.task.ideal_credit(prediction_gradient(run, ctx))
            if ideal is not None:
                ratio = per_key.norm() / ideal.norm()
                run.recorder.record("credit/ratio", ctx.step, ratio)
                recent = dx[-1][..., channels].norm()  # lag 0, the same channels
                decay = per_key.norm() / (len(per_key) ** 0.5 * recent)
            key_steps = steps[:, 0].tolist()  # example 0's (adding's differ per example)
        run.recorder.record("credit", ctx.step, per_key)
        if ctx.finite:
            self.window.append(
                {
                    "step": ctx.step,
                    "key_steps": key_steps,
                    "ratio": None if ratio is None else float(ratio),
                    "decay": None if decay is None else float(decay),
                    "per_key": per_key.tolist(),
                }
            )

    def summary(self, run: Run) -> dict[str, Any]:
        ideal = {"adding": "||dL/dpred|| per marked value", "copy": "||dL/dlogits|| at recall"}
        return {"credit": {"window": list(self.window), "ideal": ideal.get(run.spec.task.name)}}
