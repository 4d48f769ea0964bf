"""`gradlab.watch(model)`: the service's instruments on a training loop of one's own, by hooks
(the model is not rewritten), sent to the service as an external run.

    run = gradlab.watch(model, name="char-lstm", every=10)
    for x, y in batches:
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        run.log(loss=loss)
    run.finish()            # or: with gradlab.watch(model) as run: ...

A step is one optimizer step on the model's parameters (any `torch.optim` optimizer, seen by
a global step hook; with no torch optimizer, call `run.step()` after each update). At every
`every`-th step (0, every, 2 every, ...) it records, for every nn.RNN / nn.LSTM / nn.GRU inside
the model (any number, stacked, batch_first or not, with or without an initial state):

- `temporal/{layer}`: ||dL/dh_t|| for every layer and time step, the exact adjoint (every path
  through later steps) from the fused module's outputs (gradlab/instruments/adjoint.py, the
  worker's own code); `cell_temporal/{layer}` ||dL/dc_t|| for an lstm. Layers are numbered
  across modules in the order `model.modules()` lists them;
- `grad/{parameter}` (before any clipping the loop does) and `grad_norm_total`;
- `spectrum/{layer}/{block}/sigma_max|radius`, `saturation/{layer}/...`,
  `update_ratio/{parameter}` and `weight_norm/{parameter}`;

and at every step the global gradient norm's finiteness (a non-finite one is an event
`nonfinite` with where the first non-finite value is: a weight, a recurrent layer's output at
a time step, a gradient, or an overflowing norm) and whatever `run.log` is given.

What it cannot see: packed sequences (PackedSequence inputs) get no temporal profile or
saturation (their padding changes the recursion; every other quantity is recorded);
bidirectional modules and LSTMs with `proj_size` get none either; a stacked module with
dropout between its layers in training mode gets none for its layers (the masks are not
visible to a hook). Each is said once in the log. An instrument that raises is logged once
and turned off; training goes on."""

from __future__ import annotations

import logging
import math
import os
import platform
import statistics
import tempfile
import time
import uuid
import weakref
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import torch
import torch.optim.optimizer as optim_hooks
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gradlab.client import default_key, default_url
from gradlab.instruments.adjoint import LayerWeights, hidden_adjoint, input_gradient
from gradlab.instruments.closed_layer import lstm_sequence
from gradlab.instruments.nonfinite import locate
from gradlab.instruments.norms import update_ratios
from gradlab.instruments.saturation import layer_saturation
from gradlab.instruments.spectrum import block_spectrum
from gradlab.uploader import Uploader

log = logging.getLogger("gradlab.watch")
WINDOW_STEPS = 5  # the last finite profiles the summary keeps (the diagnosis's window)
LOSS_TAIL = 50  # final_loss averages the last LOSS_TAIL logged finite losses


class _Module:
    """One watched fused module: where its layers start in the global numbering, and what
    the last instrumented forward pass gave it."""

    def __init__(self, name: str, module: nn.RNNBase, first_layer: int) -> None:
        self.name, self.module, self.first_layer = name, module, first_layer
        self.kind = (
            "lstm"
            if isinstance(module, nn.LSTM)
            else "gru"
            if isinstance(module, nn.GRU)
            else f"rnn:{module.nonlinearity}"
        )
        self.why_not: str | None = None
        if module.bidirectional:
            self.why_not = "bidirectional"
        elif getattr(module, "proj_size", 0):
            self.why_not = "proj_size"
        self.last_output: Tensor | None = None

    def describe(self) -> list[dict[str, Any]]:
        m = self.module
        cell = self.kind.split(":")[0]
        return [
            {
                "layer": self.first_layer + k,
                "module": self.name or "model",
                "index": k,
                "cell": cell,
                "activation": self.kind.split(":")[1] if cell == "rnn" else None,
                "input_size": m.input_size if k == 0 else m.hidden_size,
                "hidden_size": m.hidden_size,
                "batch_first": m.batch_first,
            }
            for k in range(m.num_layers)
        ]


def _recompute_layer(layer: LayerWeights, x: Tensor, h0: Tensor, c0: Tensor | None) -> Tensor:
    """One layer's outputs (T, B, H) from its input (T, B, I), by torch's fused kernel (an
    lstm's by the closed-form layer's forward, which keeps the gates)."""
    params = [layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0]
    args = (params, True, 1, 0.0, False, False, False)
    if layer.kind == "lstm":  # with its gates, which the adjoint and saturation read next
        return lstm_sequence(layer, x, h0, c0)
    if layer.kind == "gru":
        return torch._VF.gru(x, h0.unsqueeze(0), *args)[0]
    fn = torch._VF.rnn_tanh if layer.kind == "rnn:tanh" else torch._VF.rnn_relu
    return fn(x, h0.unsqueeze(0), *args)[0]


class Run:
    """One watched run. Made by `gradlab.watch`; see the module's docstring."""

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str | None = None,
        every: int = 10,
        url: str | None = None,
        key: str | None = None,
        tags: list[str] | None = None,
        config: dict[str, Any] | None = None,
        total_steps: int = 0,
        notify: dict[str, Any] | None = None,
        http: httpx.Client | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        flush_every_s: float = 2.0,
        max_queue: int = 64,
        spool_max_bytes: int = 256 * 1024 * 1024,
        heartbeat_s: float = 10.0,
        retry_s: float = 1.0,
        retry_max_s: float = 15.0,
        finish_timeout_s: float = 60.0,
    ) -> None:
        if every < 1:
            raise ValueError("every must be at least 1")
        self.model, self.every, self.flush_every_s = model, every, flush_every_s
        self.finish_timeout_s = finish_timeout_s
        self._step = 0
        self._forward_step = 0  # the step of the last training forward pass
        self._started = time.monotonic()
        self._last_flush = self._started
        self._series: dict[str, tuple[list[int], list[Any]]] = {}
        self._events: list[dict[str, Any]] = []
        self._off: set[str] = set()  # instruments turned off after raising
        self._said: set[str] = set()
        self._handles: list[Any] = []
        self._finished = False

        self.modules: list[_Module] = []
        n_layers = 0
        for mod_name, m in model.named_modules():
            if isinstance(m, nn.RNN | nn.LSTM | nn.GRU):
                watched = _Module(mod_name, m, n_layers)
                n_layers += m.num_layers
                self.modules.append(watched)
                if watched.why_not:
                    self._say(f"{mod_name or 'model'}: {watched.why_not}: no temporal profile")
                self._handles.append(m.register_forward_hook(self._forward_hook(watched)))
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._param_ids = {id(p) for _, p in self.params}
        for _, p in self.params:
            self._handles.append(p.register_post_accumulate_grad_hook(self._on_grad))
        self._handles.append(optim_hooks.register_optimizer_step_pre_hook(self._before_update))
        self._handles.append(optim_hooks.register_optimizer_step_post_hook(self._after_update))
        self._optimizer: weakref.ref | None = None  # the one whose step counts
        self._backward_queued = False
        self._spectrum_at = -1
        self._grad_norms: list[Tensor] | None = None
        self._before: list[Tensor] | None = None

        # what the summary reads
        self.losses: deque[float | Tensor] = deque(maxlen=LOSS_TAIL)
        self.norms: list[Tensor] = []  # the global gradient norm, every step
        self.nan_events = 0
        self.first_nonfinite: dict[str, Any] | None = None
        self._step_profiles: dict[int, tuple[Tensor, Tensor | None]] = {}
        self.first_profiles: tuple[int, dict[int, tuple[Tensor, Tensor | None]]] | None = None
        self.window: deque[tuple[int, dict[int, tuple[Tensor, Tensor | None]]]] = deque(
            maxlen=WINDOW_STEPS
        )
        self.last_spectrum: dict[str, dict[str, dict[str, Tensor]]] = {}
        self.last_saturation: dict[str, dict[str, Tensor]] = {}
        self.last_update_ratio: dict[str, Tensor] = {}

        own_http = http is None
        if http is None:
            http = httpx.Client(base_url=url or default_url(), timeout=10.0)
            key = key if key is not None else default_key()
            if key:
                http.headers["Authorization"] = f"Bearer {key}"
        self._own_http = own_http
        self.http = http
        first = next(iter(self.params), (None, None))[1]
        create = {
            "name": name,
            "tags": tags or [],
            "every": every,
            "total_steps": total_steps,
            "layers": [d for m in self.modules for d in m.describe()],
            "config": config,
            "client": {
                "host": platform.node()[:100],
                "torch": torch.__version__,
                "device": str(first.device) if first is not None else "cpu",
                "dtype": str(first.dtype).removeprefix("torch.") if first is not None else "",
            },
            "notify": notify,
        }
        spool = Path(spool_dir or tempfile.gettempdir()) / f"gradlab-{uuid.uuid4().hex}.jsonl"
        self.uploader = Uploader(
            http,
            create,
            spool,
            max_queue=max_queue,
            spool_max_bytes=spool_max_bytes,
            heartbeat_s=heartbeat_s,
            retry_s=retry_s,
            retry_max_s=retry_max_s,
        )
        self.uploader.start()

    # --- public ---------------------------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The experiment id, once the service has made the run (None until then)."""
        return self.uploader.run_id

    @property
    def url(self) -> str | None:
        """The run's report page (add `?key=...` in a browser)."""
        if self.id is None:
            return None
        return f"{str(self.http.base_url).rstrip('/')}/v1/experiments/{self.id}/report"

    @property
    def current_step(self) -> int:
        return self._step

    @property
    def cancel_requested(self) -> bool:
        """Someone cancelled the run in the service (training is not stopped for you)."""
        return self.uploader.cancel_requested

    @property
    def instrumented(self) -> bool:
        return self._step % self.every == 0 and not self._finished

    def log(self, step: int | None = None, **values: float | Tensor) -> None:
        """Scalars at `step`, e.g. `run.log(loss=loss)`; by default the step of the last
        training forward pass (so a loss logged after `opt.step()` stays with its step). A tensor
        is kept as it is and read on the upload thread (no device sync in the loop). A
        non-finite loss is a `nonfinite` event."""
        at = self._forward_step if step is None else int(step)
        for name, value in values.items():
            v = value.detach() if isinstance(value, Tensor) else float(value)
            self._record(name, at, v)
            if name == "loss":
                self.losses.append(v)
                bad = not math.isfinite(v) if isinstance(v, float) else None
                if bad is None and not v.is_cuda:
                    bad = not bool(torch.isfinite(v).all())
                if bad:
                    self._nonfinite(at, {"where": "loss"})

    def step(self) -> None:
        """Count one step, for loops that update the weights without a torch optimizer."""
        self._end_step()

    def finish(self, status: str = "succeeded") -> dict[str, Any] | None:
        """End the run: the hooks come off, what is left is sent with the summary (waiting up
        to `finish_timeout_s`; unsent batches stay in the spool file). Returns the experiment
        as the service answered (with its diagnosis), or None when it could not be reached."""
        if self._finished:
            return self.uploader.experiment
        self._finished = True
        for h in self._handles:
            h.remove()
        self._flush()
        if self.uploader.cancel_requested and status == "succeeded":
            status = "cancelled"
        if self.first_nonfinite is not None and status == "succeeded":
            status = "diverged"
        try:
            summary = self.summary()
        except Exception:  # the run still ends; the service diagnoses what it has
            log.exception("gradlab.watch: the summary failed; finishing without it")
            summary = {"steps": self._step}
        self.uploader.request_finish({"status": status, "step": self._step, "summary": summary})
        if not self.uploader.finished.wait(self.finish_timeout_s):
            log.warning(
                "gradlab: the service did not take the run's end within %.0f s; the unsent "
                "batches are in %s",
                self.finish_timeout_s,
                self.uploader.spool_path,
            )
            self.uploader.stop.set()
        self.uploader.join(10)
        if self._own_http:
            self.http.close()
        return self.uploader.experiment

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.finish("failed" if exc_type is not None else "succeeded")

    @property
    def stats(self) -> dict[str, int]:
        """Batches sent, spooled (sent later), refused and dropped so far."""
        u = self.uploader
        return {"sent": u.sent, "spooled": u.spooled, "refused": u.refused, "dropped": u.dropped}

    # --- recording ------------------------------------------------------------------------

    def _record(self, name: str, step: int, value: Any) -> None:
        steps, values = self._series.setdefault(name, ([], []))
        steps.append(step)
        values.append(value)

    def _say(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            log.warning("gradlab.watch: %s", message)

    def _guarded(self, instrument: str, fn: Any, *args: Any) -> Any:
        """Run one instrument; one that raises is logged once and turned off."""
        if instrument in self._off:
            return None
        try:
            return fn(*args)
        except Exception:
            self._off.add(instrument)
            log.exception("gradlab.watch: the %s instrument failed and is off", instrument)
            return None

    def _flush(self) -> None:
        if self._series or self._events:
            self.uploader.put(self._series, self._events, self._step)
            self._series, self._events = {}, []
        self._last_flush = time.monotonic()

    # --- hooks ----------------------------------------------------------------------------

    def _forward_hook(self, watched: _Module):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            out = output[0]
            if isinstance(out, Tensor):
                watched.last_output = out.detach()
            if torch.is_grad_enabled():
                self._forward_step = self._step
            if not (self.instrumented and torch.is_grad_enabled()) or "temporal" in self._off:
                return
            self._guarded("temporal", self._capture, watched, args, output)

        return hook

    def _capture(self, watched: _Module, args: tuple, output: Any) -> None:
        """At an instrumented step's forward pass: hook the outputs' gradients, so that the
        adjoint is computed in the backward pass (the weights are those of the forward)."""
        if watched.why_not is not None:
            return
        m = watched.module
        x = args[0] if args else None
        if isinstance(x, PackedSequence):
            return self._say(f"{watched.name or 'model'}: packed sequence: no temporal profile")
        if not isinstance(x, Tensor):
            return
        if m.num_layers > 1 and m.dropout > 0 and m.training:
            return self._say(
                f"{watched.name or 'model'}: dropout between stacked layers while training: "
                "no temporal profile"
            )
        out, state = output
        h_n, c_n = state if isinstance(state, tuple) else (state, None)
        # the gradients are hooked on the tensors the loop itself holds, not on views of them
        hooked = [(role, t) for role, t in (("out", out), ("h_n", h_n), ("c_n", c_n))]
        hooked = [(role, t) for role, t in hooked if t is not None and t.requires_grad]
        unbatched = x.dim() == 2
        if unbatched:  # (T, I): one sequence
            x, out = x.unsqueeze(1), out.unsqueeze(1)
            h_n = h_n.unsqueeze(1)
            c_n = None if c_n is None else c_n.unsqueeze(1)
        elif m.batch_first:
            x, out = x.transpose(0, 1), out.transpose(0, 1)
        hx = args[1] if len(args) > 1 else None
        h0, c0 = (hx if isinstance(hx, tuple) else (hx, None)) if hx is not None else (None, None)
        if unbatched and h0 is not None:
            h0 = h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
        if not hooked:
            return
        step = self._step
        x_tm, out_tm = x.detach(), out.detach()
        h0_d = None if h0 is None else h0.detach()
        c0_d = None if c0 is None else c0.detach()
        roles = [role for role, _ in hooked]

        def on_grads(grads: Any) -> None:
            got = dict(zip(roles, grads, strict=True))
            if "temporal" in self._off or step != self._step:
                return
            self._guarded("temporal", self._profiles, watched, step, x_tm, out_tm, h0_d, c0_d, got)

        torch.autograd.graph.register_multi_grad_hook([t for _, t in hooked], on_grads)

    @torch.no_grad()
    def _profiles(
        self,
        watched: _Module,
        step: int,
        x: Tensor,
        out: Tensor,
        h0: Tensor | None,
        c0: Tensor | None,
        grads: dict[str, Tensor | None],
    ) -> None:
        """The adjoint of every layer of one stacked module, top down: the top layer's direct
        gradient is what its output received (plus h_n's at the last step); each layer's
        dL/dx is the direct gradient of the layer below."""
        m = watched.module
        n_layers, b, hid = m.num_layers, x.shape[1], m.hidden_size
        layers = [LayerWeights.of(m, k) for k in range(n_layers)]
        zero = x.new_zeros(b, hid)
        h0s = [zero if h0 is None else h0[k] for k in range(n_layers)]
        c0s = (
            [zero if c0 is None else c0[k] for k in range(n_layers)]
            if watched.kind == "lstm"
            else None
        )
        inputs, outs = [x], []
        for k, layer in enumerate(layers):
            h = (
                out
                if k == n_layers - 1
                else _recompute_layer(layer, inputs[k], h0s[k], c0s and c0s[k])
            )
            outs.append(h)
            inputs.append(h)
        g_out, g_hn, g_cn = grads.get("out"), grads.get("h_n"), grads.get("c_n")
        if g_out is not None and m.batch_first and g_out.dim() == 3:
            g_out = g_out.transpose(0, 1)
        if g_out is not None and g_out.dim() == 2:
            g_out = g_out.unsqueeze(1)
        if g_hn is not None and g_hn.dim() == 2:
            g_hn = g_hn.unsqueeze(1)
        if g_cn is not None and g_cn.dim() == 2:
            g_cn = g_cn.unsqueeze(1)
        direct = torch.zeros_like(out) if g_out is None else g_out.to(out.dtype).clone()
        for k in range(n_layers - 1, -1, -1):
            layer, xk, hk = layers[k], inputs[k], outs[k]
            if g_hn is not None:
                direct[-1] += g_hn[k]
            cell = torch.empty_like(hk) if watched.kind == "lstm" else None
            ck0 = None if c0s is None else c0s[k]
            # the lower layer's direct gradient from the recursion's own gate gradients
            dz = hk.new_empty(*hk.shape[:2], 4, hid) if k > 0 and cell is not None else None
            a = hidden_adjoint(
                layer,
                xk,
                hk,
                direct,
                "closed",
                cell,
                h0=h0s[k],
                c0=ck0,
                cell_direct=None if g_cn is None else g_cn[k],
                dz_out=dz,
            )
            index = watched.first_layer + k
            profile = a.flatten(1).norm(dim=1)  # (T,)
            cell_profile = None if cell is None else cell.flatten(1).norm(dim=1)
            self._record(f"temporal/{index}", step, profile)
            if cell_profile is not None:
                self._record(f"cell_temporal/{index}", step, cell_profile)
            self._step_profiles[index] = (profile, cell_profile)
            self._guarded("saturation", self._saturation, index, step, layer, xk, hk, h0s[k], ck0)
            if k > 0:
                direct = input_gradient(layer, xk, hk, a, cell, h0s[k], ck0, dz)

    def _saturation(self, index: int, step: int, layer, x, h, h0, c0) -> None:
        fractions = layer_saturation(layer, x, h, h0, c0)
        for name, value in fractions.items():
            self._record(f"saturation/{index}/{name}", step, value)
        if fractions:
            self.last_saturation[str(index)] = fractions

    def _on_grad(self, param: Tensor) -> None:
        """After each parameter's gradient is accumulated: once per backward, queue the end
        of backward, when every gradient is in (before any clipping by the loop)."""
        if self._backward_queued or self._finished:
            return
        self._backward_queued = True
        torch.autograd.Variable._execution_engine.queue_callback(self._after_backward)

    def _after_backward(self) -> None:
        self._backward_queued = False
        self._guarded("grad_norms", self._grad_check)
        if self.instrumented and self._spectrum_at != self._step:
            self._spectrum_at = self._step  # once a step, with the weights backward saw
            self._guarded("spectrum", self._spectrum, self._step)

    @torch.no_grad()
    def _grad_check(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self.params]
        if not grads:
            return
        per = torch._foreach_norm(grads)
        total = torch.stack(per).double().norm()
        self._grad_norms = per if self.instrumented else None
        self._total = total

    def _counts(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether this optimizer's step is the run's step: the first one seen that holds the
        model's parameters."""
        if self._finished:
            return False
        if self._optimizer is not None:
            return self._optimizer() is optimizer
        holds = any(id(p) in self._param_ids for g in optimizer.param_groups for p in g["params"])
        if holds:
            self._optimizer = weakref.ref(optimizer)
        return holds

    def _before_update(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        if not self._counts(optimizer):
            return
        if self.instrumented and "update_ratio" not in self._off:
            self._before = [p.detach().clone() for _, p in self.params]

    def _after_update(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        if self._counts(optimizer):
            self._end_step()

    def _end_step(self) -> None:
        """What closes a step: the per-step checks, the instrumented step's records, the
        flush, then the step count."""
        step = self._step
        total = getattr(self, "_total", None)
        self._total = None
        finite = True
        if total is not None:
            self.norms.append(total)
            finite = bool(torch.isfinite(total))
            if not finite:
                self._guarded("nonfinite", self._locate, step)
        if self.instrumented:
            self._guarded("grad_norms", self._record_norms, step, total)
            self._guarded("update_ratio", self._update_ratio, step)
            if finite and self._step_profiles:
                snap = (step, dict(self._step_profiles))
                self.first_profiles = self.first_profiles or snap
                self.window.append(snap)
        self._step_profiles = {}
        self._before = None
        self._step += 1
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self._flush()

    def _record_norms(self, step: int, total: Tensor | None) -> None:
        if self._grad_norms is None:
            return
        for (name, _), norm in zip(self.params, self._grad_norms, strict=True):
            self._record(f"grad/{name}", step, norm)
        if total is not None:
            self._record("grad_norm_total", step, total)
        self._grad_norms = None

    @torch.no_grad()
    def _spectrum(self, step: int) -> None:
        for watched in self.modules:
            for k in range(watched.module.num_layers):
                w = getattr(watched.module, f"weight_hh_l{k}")
                if not torch.isfinite(w).all():
                    continue
                index = watched.first_layer + k
                spec = block_spectrum(w)
                for block, (sigma, radius) in spec.items():
                    self._record(f"spectrum/{index}/{block}/sigma_max", step, sigma)
                    self._record(f"spectrum/{index}/{block}/radius", step, radius)
                self.last_spectrum[str(index)] = {
                    b: {"sigma_max": s, "radius": r} for b, (s, r) in spec.items()
                }

    def _update_ratio(self, step: int) -> None:
        if self._before is None:
            return
        ratios, new = update_ratios([p.detach() for _, p in self.params], self._before)
        for (name, _), ratio, w in zip(self.params, ratios, new, strict=True):
            self._record(f"update_ratio/{name}", step, ratio)
            self._record(f"weight_norm/{name}", step, w)
            self.last_update_ratio[name] = ratio

    def _locate(self, step: int) -> None:
        outputs = [w.last_output for w in self.modules if w.last_output is not None]
        origin = locate(self.params, outputs)
        if origin.get("where") == "activation":
            watched = [w for w in self.modules if w.last_output is not None][origin["layer"]]
            origin = {**origin, "module": watched.name or "model", "layer": watched.first_layer}
            origin["note"] = "the module's last layer's output; time step as the output is laid out"
        self._nonfinite(step, origin)

    def _nonfinite(self, step: int, origin: dict[str, Any]) -> None:
        if (
            self._events
            and self._events[-1]["step"] == step
            and self._events[-1]["kind"] == "nonfinite"
        ):
            return  # one event a step
        self.nan_events += 1
        self._events.append({"step": step, "kind": "nonfinite", "detail": {"origin": origin}})
        if self.first_nonfinite is None:
            self.first_nonfinite = {"step": step, "origin": origin}

    # --- the summary ----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What the service's diagnosis reads, in the worker's terms; the profiles go raw (the
        service computes their evidence with its own function)."""
        losses = [float(v) for v in self.losses]
        finite_losses = [v for v in losses if math.isfinite(v)]
        norms = [float(n) for n in self.norms]
        finite_norms = [n for n in norms if math.isfinite(n)]
        elapsed = time.monotonic() - self._started

        def profiles(snap: tuple[int, dict] | None, cells: bool = False) -> dict[str, Any] | None:
            if snap is None:
                return None
            step, by_layer = snap
            order = sorted(by_layer)
            out: dict[str, Any] = {"step": step, "layers": [by_layer[i][0].tolist() for i in order]}
            if cells:
                out["cell_layers"] = [
                    None if by_layer[i][1] is None else by_layer[i][1].tolist() for i in order
                ]
            return out

        last = self.window[-1] if self.window else None
        return {
            "final_loss": sum(finite_losses) / len(finite_losses) if finite_losses else None,
            "max_grad_norm": max(finite_norms, default=0.0),
            "grad_norm_median": statistics.median(finite_norms) if finite_norms else None,
            "nan_events": self.nan_events,
            "first_nonfinite": self.first_nonfinite,
            "temporal_profile": {
                "first": profiles(self.first_profiles),
                "last": profiles(last),
                "window": [profiles(w, cells=True) for w in self.window],
            },
            "spectrum": {
                layer: {b: {k: float(v) for k, v in d.items()} for b, d in blocks.items()}
                for layer, blocks in self.last_spectrum.items()
            },
            "saturation": {
                i: {k: float(v) for k, v in d.items()} for i, d in self.last_saturation.items()
            },
            "update_ratio": {n: float(v) for n, v in self.last_update_ratio.items()},
            "steps": self._step,
            "wall_time_s": elapsed,
            "steps_per_second": self._step / elapsed if elapsed > 0 else None,
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "instruments_off": sorted(self._off),
            "uploads": self.stats,
        }


def watch(model: nn.Module, **options: Any) -> Run:
    """Watch `model`'s recurrent modules in your own loop; see gradlab.watcher.Run."""
    return Run(model, **options)
