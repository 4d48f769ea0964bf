"""The total derivative dL/dh_t of one recurrent layer, every path through later time steps
included, recovered after an ordinary backward pass through torch's fused modules.

`direct` is the gradient the layer's output tensor received (`retain_grad` on it): every path
from h_t that does not go through h_{t+1} of the same layer (the head, the layers above,
residual connections). The total adjoint a_t solves a_t = direct_t + J_{t+1}^T a_{t+1}
backwards in time, with J_{t+1} = dh_{t+1}/dh_t. For rnn, lstm and gru the products
J^T a have closed forms evaluated from the stored inputs and hidden states (the gates
recomputed by batched matmuls over blocks of time steps, then one (B, G*H) x (G*H, H) matmul
per time step, no autograd); other layers that expose `step(x_t, state) -> state` go through
a generic unrolled autograd recompute (`unrolled`), also kept for the known cells to measure
against (bench/temporal_routes.py).

Shared by the service's worker (worker/instruments/) and `gradlab.watch` in a user's own loop:
one implementation. A layer is anything with `weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`,
`bias_hh_l0` (a single-layer fused module, or `LayerWeights`: one layer of a stacked one); the
initial state (h0, and c0 for an lstm) is zero unless given.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gradlab.instruments import matmul, native
from models.cells import ElmanLayer

Step = Callable[[Tensor, object], object]


@dataclass
class LayerWeights:
    """One layer of a stacked fused module (layer k of `nn.LSTM(num_layers=L)`) seen as a
    single-layer one: its weights under the `_l0` names the closed forms read."""

    kind: str  # 'rnn:tanh', 'rnn:relu', 'lstm', 'gru'
    weight_ih_l0: Tensor
    weight_hh_l0: Tensor
    bias_ih_l0: Tensor
    bias_hh_l0: Tensor

    @property
    def hidden_size(self) -> int:
        return self.weight_hh_l0.shape[1]

    @classmethod
    def of(cls, module: nn.RNNBase, k: int) -> LayerWeights:
        """Layer k of a fused nn.RNN/nn.LSTM/nn.GRU; a module without biases gets zeros."""
        w_ih, w_hh = getattr(module, f"weight_ih_l{k}"), getattr(module, f"weight_hh_l{k}")
        zero = w_hh.new_zeros(w_hh.shape[0])
        b_ih = getattr(module, f"bias_ih_l{k}", None) if module.bias else None
        b_hh = getattr(module, f"bias_hh_l{k}", None) if module.bias else None
        if isinstance(module, nn.LSTM):
            kind = "lstm"
        elif isinstance(module, nn.GRU):
            kind = "gru"
        else:
            kind = f"rnn:{module.nonlinearity}"
        return cls(
            kind,
            w_ih.detach(),
            w_hh.detach(),
            zero if b_ih is None else b_ih.detach(),
            zero if b_hh is None else b_hh.detach(),
        )


@dataclass
class Gates:
    """Post-activation gates of a gated layer, all time steps at once."""

    names: tuple[str, ...]
    values: Tensor  # (T, B, G, H) in the weight's gate order
    cell: Tensor | None = None  # lstm only: c_t, (T, B, H)
    cell_tanh: Tensor | None = None  # lstm, where the forward kept it: tanh c_t, (T, B, H)
    hh_n: Tensor | None = None  # gru only: W_hn h_{t-1} + b_hn, (T, B, H)


def layer_kind(layer: nn.Module) -> str | None:
    """'rnn:<activation>', 'lstm', 'gru', 'step' (generic) or None (unsupported)."""
    if isinstance(layer, LayerWeights):
        return layer.kind
    if isinstance(layer, nn.RNNBase):
        plain = (
            layer.num_layers == 1
            and not layer.bidirectional
            and not layer.batch_first
            and layer.bias
            and getattr(layer, "proj_size", 0) == 0
        )
        if plain and isinstance(layer, nn.LSTM):
            return "lstm"
        if plain and isinstance(layer, nn.GRU):
            return "gru"
        if plain and isinstance(layer, nn.RNN):
            return f"rnn:{layer.nonlinearity}"
    elif isinstance(layer, ElmanLayer):
        return f"rnn:{layer.activation}"
    return "step" if callable(getattr(layer, "step", None)) else None


CHUNK = 16  # time steps per block: keeps each block's (L, B, G, H) gate tensors in cache


def shifted(h: Tensor, h0: Tensor | None = None) -> Tensor:
    """h_{t-1} for every t, with the initial state h0 (B, H) (zero when None): (T, B, H)."""
    first = torch.zeros_like(h[:1]) if h0 is None else h0.unsqueeze(0).to(h.dtype)
    return torch.cat([first, h[:-1]])


def _pre(
    layer: nn.Module,
    x: Tensor,
    h: Tensor,
    s: int = 0,
    e: int | None = None,
    out: Tensor | None = None,
    h0: Tensor | None = None,
) -> Tensor:
    """Pre-activations W_ih x_t + b_ih + W_hh h_{t-1} + b_hh for s <= t < e: (L, B, G*H),
    written into `out` when given (a contiguous (L, B, ...) block); h_{-1} = h0 (or 0)."""
    e = h.shape[0] if e is None else e
    w_ih, w_hh = layer.weight_ih_l0, layer.weight_hh_l0
    flat = matmul.linear(x[s:e].flatten(0, 1), w_ih, layer.bias_ih_l0 + layer.bias_hh_l0)
    if out is not None:
        flat = out.view(-1, w_ih.shape[0]).copy_(flat)
    lo = max(s, 1)  # h_{-1} = 0: step 0 has only the input part
    if s == 0 and h0 is not None and e > 0:
        matmul.accumulate(flat[: x.shape[1]], h0.to(flat.dtype), w_hh)
    if e > lo:
        matmul.accumulate(flat[(lo - s) * x.shape[1] :], h[lo - 1 : e - 1].flatten(0, 1), w_hh)
    return flat.view(e - s, x.shape[1], -1)


# Gates recomputed for an output tensor, while it lives: the temporal profile and the
# saturation instrument both need them at the same step, and recomputing costs a GEMM.
_gate_cache: dict[int, tuple[int, Gates]] = {}


# What a closed-form layer (closed_layer.py) left for its output tensor, while it lives: its
# gates from the forward, its total adjoints once the backward has run.
_published: dict[int, dict] = {}


def publish(h: Tensor, box: dict) -> None:
    """`box` holds 'gates' (lstm) now and 'adjoint' ((dL/dh_t, dL/dc_t or None)) after the
    backward: `gates` and `total_adjoint` read them instead of recomputing."""
    key = id(h)
    _published[key] = box
    weakref.finalize(h, _published.pop, key, None)
    if "gates" in box:
        if not _gate_cache.get(key):
            weakref.finalize(h, _gate_cache.pop, key, None)
        _gate_cache[key] = (h._version, box["gates"])


def gates(
    layer: nn.Module, x: Tensor, h: Tensor, h0: Tensor | None = None, c0: Tensor | None = None
) -> Gates:
    """An lstm's or gru's gates for its input x (T, B, I) and outputs h (T, B, H), computed
    once per h: the entry goes when h is freed (or changed in place)."""
    key = id(h)
    hit = _gate_cache.get(key)
    if hit is not None and hit[0] == h._version:
        return hit[1]
    g = _gates(layer, x, h, h0, c0)
    if not _gate_cache.get(key):
        weakref.finalize(h, _gate_cache.pop, key, None)
    _gate_cache[key] = (h._version, g)
    return g


@torch.no_grad()
def _gates(
    layer: nn.Module, x: Tensor, h: Tensor, h0: Tensor | None = None, c0: Tensor | None = None
) -> Gates:
    """Recompute the gates block by block in time: at long T, passes over the whole
    (T, B, G, H) are the cost."""
    t_len, b, n = h.shape
    lstm = layer.weight_hh_l0.shape[0] == 4 * n
    v = h.new_empty(t_len, b, 4 if lstm else 3, n)
    extra = torch.empty_like(h)  # lstm: c_t; gru: W_hn h_{t-1} + b_hn
    prev = torch.zeros_like(h[0]) if c0 is None else c0.to(h.dtype)
    for s in range(0, t_len, CHUNK):
        e = min(s + CHUNK, t_len)
        vc = v[s:e]  # (L, B, G, H)
        if lstm:
            _pre(layer, x, h, s, e, out=vc, h0=h0)
            vc[:, :, :2].sigmoid_()
            vc[:, :, 2].tanh_()
            vc[:, :, 3].sigmoid_()
            ig = vc[:, :, 0] * vc[:, :, 2]  # (L, B, H)
            for k in range(e - s):  # a linear recurrence; a cumprod form would lose precision
                prev = torch.addcmul(ig[k], vc[k, :, 1], prev, out=extra[s + k])
            continue
        # GRU: n needs its recurrent pre-activation apart (inside r * (...)).
        xi = matmul.linear(x[s:e].flatten(0, 1), layer.weight_ih_l0, layer.bias_ih_l0)
        vc.copy_(xi.view(e - s, b, 3, n))
        hp = h[s - 1 : e - 1] if s > 0 else shifted(h[:e], h0)
        hh = matmul.linear(hp.flatten(0, 1), layer.weight_hh_l0, layer.bias_hh_l0)
        hh = hh.view(e - s, b, 3, n)
        vc[:, :, :2].add_(hh[:, :, :2]).sigmoid_()
        extra[s:e] = hh[:, :, 2]
        vc[:, :, 2].addcmul_(vc[:, :, 0], hh[:, :, 2]).tanh_()
    if lstm:
        return Gates(("i", "f", "g", "o"), v, cell=extra)
    return Gates(("r", "z", "n"), v, hh_n=extra)


def activation_derivative(
    act: str, layer: nn.Module, x: Tensor, h: Tensor, h0: Tensor | None = None
) -> Tensor:
    """f'(z_t) for every t, (T, B, H). From h where autograd itself uses the result (so both
    round alike); from z (recomputed) for elu, whose backward uses its input."""
    if act == "tanh":
        return 1 - h * h
    if act == "sigmoid":
        return h * (1 - h)
    if act == "relu":
        return (h > 0).to(h.dtype)
    if act == "leaky_relu":
        # In the run's dtype from the start: a python-float where() is float32, and 0.01 cast
        # up from float32 is 0.0099999998 in a float64 run.
        return torch.where(h > 0, torch.ones_like(h), torch.full_like(h, 0.01))
    if act == "linear":
        return torch.ones_like(h)
    if act == "elu":
        z = _pre(layer, x, h, h0=h0)
        return torch.where(z > 0, torch.ones_like(z), torch.exp(z))
    raise ValueError(f"no closed form for activation {act!r}")


def _rnn(w_hh: Tensor, dfdz: Tensor, direct: Tensor) -> Tensor:
    a = direct.clone()  # (T, B, H); accumulated in place: addmm's out= would copy first
    delta = torch.empty_like(direct[0])
    rec = matmul.Weight(w_hh.t().contiguous(), direct.shape[1])
    for t in range(direct.shape[0] - 1, 0, -1):
        torch.mul(a[t], dfdz[t], out=delta)
        rec.accumulate(a[t - 1], delta)  # direct + W_hh^T (f' * a)
    return a


def _lstm_coef(
    v: Tensor, c: Tensor, c_prev: Tensor, tc: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """For a block of steps: d(pre-activations)/d(a^c for i, f, g; a^h for o) (L, B, 4, H),
    and dh_t/dc_t (L, B, H). tc: tanh c_t when the forward kept it."""
    i, _, g, o = v.unbind(2)
    tc = torch.tanh(c) if tc is None else tc
    coef = torch.addcmul(v, v, v, value=-1)  # sigma' for every gate; g's slot rewritten below
    torch.addcmul(torch.ones_like(g), g, g, value=-1, out=coef[:, :, 2])
    coef[:, :, 0].mul_(g)
    coef[:, :, 1].mul_(c_prev)
    coef[:, :, 2].mul_(i)
    coef[:, :, 3].mul_(tc)
    return coef, o - o * tc * tc


def _lstm(
    w_hh: Tensor,
    g: Gates,
    direct: Tensor,
    cell_out: Tensor | None = None,
    c0: Tensor | None = None,
    cell_direct: Tensor | None = None,
    dz_out: Tensor | None = None,
) -> Tensor:
    """dL/dh_t; the total dL/dc_t is written into `cell_out` (T, B, H) when given.
    cell_direct: the gradient the final cell state c_{T-1} received from outside (c_n's).
    dz_out (T, B, 4, H): filled with the gates' pre-activation gradients (for dL/dx)."""
    v, c = g.values, g.cell  # (T, B, 4, H), (T, B, H)
    assert c is not None
    if native.usable(direct, v) and (cell_out is None or cell_out.is_contiguous()):
        cell = torch.empty(direct.shape, dtype=direct.dtype) if cell_out is None else cell_out
        return native.lstm_adjoint(w_hh, v, c, g.cell_tanh, direct, cell, c0, cell_direct, dz_out)
    t_len, b, n = direct.shape
    a = direct.clone()
    # dL/dc_{t+1} * f_{t+1}: the path along the cell; at T-1 what c_n received
    carry = torch.zeros_like(direct[0]) if cell_direct is None else cell_direct.clone()
    cell = torch.empty_like(direct) if cell_out is None else cell_out
    # the per-step views below write into dz_out itself: a copy would be read stale
    assert dz_out is None or dz_out.is_contiguous()
    # Without dz_out one (B, 4, H) buffer serves every step.
    dz = direct.new_empty(1, b, 4, n).expand(t_len, -1, -1, -1) if dz_out is None else dz_out
    # Views made once: at (64, 128) a slice costs as much as the op on it.
    a_t, f_t = a.unbind(0), v[:, :, 1].unbind(0)
    ac_t, ac3_t = cell.unbind(0), cell.unsqueeze(2).unbind(0)
    dz_t, dz3_t, dzo_t = dz.flatten(2).unbind(0), dz[:, :, :3].unbind(0), dz[:, :, 3].unbind(0)
    rec = matmul.Weight(w_hh.t().contiguous(), b)
    for e in range(t_len, 0, -CHUNK):
        s = max(e - CHUNK, 0)
        c_prev = c[s - 1 : e - 1] if s > 0 else shifted(c[:e], c0)
        tc = None if g.cell_tanh is None else g.cell_tanh[s:e]
        coef, keep = _lstm_coef(v[s:e], c[s:e], c_prev, tc)
        coef3, coefo, keep = coef[:, :, :3].unbind(0), coef[:, :, 3].unbind(0), keep.unbind(0)
        for t in range(e - 1, s - 1, -1):
            k = t - s
            ac = torch.addcmul(carry, a_t[t], keep[k], out=ac_t[t])  # total dL/dc_t, (B, H)
            torch.mul(coef3[k], ac3_t[t], out=dz3_t[t])
            torch.mul(coefo[k], a_t[t], out=dzo_t[t])
            if t > 0:
                rec.accumulate(a_t[t - 1], dz_t[t])
            carry = torch.mul(ac, f_t[t], out=carry)
    return a


def _gru(
    w_hh: Tensor,
    g: Gates,
    h: Tensor,
    direct: Tensor,
    h0: Tensor | None = None,
    dz_out: Tensor | None = None,
    dz_ih_out: Tensor | None = None,
) -> Tensor:
    """dL/dh_t. dz_out (T, B, 3, H): filled with the gradients of the recurrent products'
    outputs W_h{r,z,n} h_{t-1} + b_h{r,z,n} (n's is its pre-activation's times r); dz_ih_out
    (T, B, 3, H, with dz_out): the input products' (r's and z's the same, n's not times r)."""
    assert dz_ih_out is None or dz_out is not None
    if native.usable(direct, g.values):
        return native.gru_adjoint(w_hh, g.values, g.hh_n, h, direct, h0, dz_out, dz_ih_out)
    t_len, b, n = direct.shape
    a = direct.clone()
    assert dz_out is None or dz_out.is_contiguous()
    dz = direct.new_empty(1, b, 3, n).expand(t_len, -1, -1, -1) if dz_out is None else dz_out
    a_t, dz_t = a.unbind(0), dz.unbind(0)
    rec = matmul.Weight(w_hh.t().contiguous(), b)
    # t = 0 has no a_{-1} to pass on to: only the weight gradients want its dz
    last = 0 if dz_out is not None else 1
    for e in range(t_len, 0, -CHUNK):
        s = max(e - CHUNK, 0)
        r, z, n_ = g.values[s:e].unbind(2)
        h_prev = h[s - 1 : e - 1] if s > 0 else shifted(h[:e], h0)
        coef = torch.empty_like(g.values[s:e])  # (L, B, 3, H): d pre-activation / d a_t
        dn = torch.mul(1 - z, 1 - n_ * n_, out=coef[:, :, 2])  # dh_t/d(n's pre-activation)
        torch.mul(dn * g.hh_n[s:e], r - r * r, out=coef[:, :, 0])
        torch.mul(h_prev - n_, z - z * z, out=coef[:, :, 1])
        dn.mul_(r)
        for t in range(e - 1, max(s, last) - 1, -1):
            torch.mul(a_t[t].unsqueeze(1), coef[t - s], out=dz_t[t])
            if t > 0:
                a_t[t - 1].addcmul_(a_t[t], z[t - s])  # the z * h_{t-1} path
                rec.accumulate(a_t[t - 1], dz_t[t].view(b, 3 * n))
    if dz_ih_out is not None:
        dz_ih_out.copy_(dz_out)
        _, z, n_ = g.values.unbind(2)
        torch.mul(a, 1 - z, out=dz_ih_out[:, :, 2]).mul_(1 - n_ * n_)
    return a


def unrolled(step: Step, x: Tensor, direct: Tensor) -> Tensor:
    """Generic route: recompute the layer step by step under autograd and take the gradient
    of sum_t <direct_t, h_t> w.r.t. every h_t node: the same recursion, so the same totals."""
    with torch.enable_grad():
        state: object = None
        hs: list[Tensor] = []
        for t in range(x.shape[0]):
            state = step(x[t], state)
            hs.append(state if isinstance(state, Tensor) else state[0])  # type: ignore[index]
        surrogate = sum((h * d).sum() for h, d in zip(hs, direct.unbind(0), strict=True))
        grads = torch.autograd.grad(surrogate, hs, allow_unused=True)
    pairs = zip(grads, direct, strict=True)
    return torch.stack([torch.zeros_like(d) if g is None else g for g, d in pairs])


def cell_step(layer: nn.Module, kind: str) -> Step:
    """A step function for the known layers, from torch's own cell kernels: the unrolled
    alternative to the closed forms (kept to measure against and to test with)."""
    w = (layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0)
    if kind == "lstm":

        def lstm(x: Tensor, s: object) -> object:
            if s is None:
                z = x.new_zeros(x.shape[0], layer.hidden_size)
                s = (z, z)
            return torch._VF.lstm_cell(x, s, *w)

        return lstm
    if kind == "gru":
        return lambda x, s: torch._VF.gru_cell(x, _zero(x, layer) if s is None else s, *w)
    act = kind.split(":", 1)[1]
    if isinstance(layer, ElmanLayer):
        return lambda x, s: layer.act(
            F.linear(x, w[0], w[2]) + F.linear(_zero(x, layer) if s is None else s, w[1], w[3])
        )
    cell = torch._VF.rnn_tanh_cell if act == "tanh" else torch._VF.rnn_relu_cell
    return lambda x, s: cell(x, _zero(x, layer) if s is None else s, *w)


def _zero(x: Tensor, layer: nn.Module) -> Tensor:
    return x.new_zeros(x.shape[0], layer.hidden_size)


def hidden_adjoint(
    layer: nn.Module,
    x: Tensor,
    h: Tensor,
    direct: Tensor,
    method: str = "closed",
    cell_out: Tensor | None = None,
    h0: Tensor | None = None,
    c0: Tensor | None = None,
    cell_direct: Tensor | None = None,
    dz_out: Tensor | None = None,
) -> Tensor | None:
    """dL/dh_t for every t, (T, B, H); None for a layer with no known route.

    x: the layer's input (T, B, I); h: its outputs (T, B, H); direct: h's own gradient.
    cell_out (lstm, closed form): filled with the total dL/dc_t, (T, B, H).
    h0, c0: the initial state (B, H) when not zero (closed form only); cell_direct (lstm): the
    gradient the last cell state received from outside the layer (a returned c_n); dz_out
    (lstm, (T, B, 4, H)): filled with the pre-activation gradients `input_gradient` reads."""
    kind = layer_kind(layer)
    if kind is None:
        return None
    if kind == "step":
        return unrolled(layer.step, x.detach(), direct.detach())
    if method == "unrolled":
        assert h0 is None and c0 is None and cell_direct is None, "closed form only"
        return unrolled(cell_step(layer, kind), x.detach(), direct.detach())
    with torch.no_grad():
        w_hh = layer.weight_hh_l0.detach()
        if kind == "lstm":
            g = gates(layer, x, h, h0, c0)
            return _lstm(w_hh, g, direct, cell_out, c0, cell_direct, dz_out)
        if kind == "gru":
            return _gru(w_hh, gates(layer, x, h, h0), h, direct, h0)
        dfdz = activation_derivative(kind.split(":", 1)[1], layer, x, h, h0)
        return _rnn(w_hh, dfdz, direct)


@torch.no_grad()
def input_gradient(
    layer: nn.Module,
    x: Tensor,
    h: Tensor,
    a: Tensor,
    cell: Tensor | None = None,
    h0: Tensor | None = None,
    c0: Tensor | None = None,
    dz: Tensor | None = None,
) -> Tensor:
    """dL/dx_t through this layer, (T, B, I), from its total adjoint a (T, B, H) (and for an
    lstm the total dL/dc_t, `cell`, or the pre-activation gradients `dz` the recursion kept):
    the 'direct' gradient of the layer below in a stack. All time steps at once: the
    pre-activation gradients, then one GEMM with W_ih."""
    kind = layer_kind(layer)
    w_ih = layer.weight_ih_l0.detach()
    if dz is not None:
        pass
    elif kind == "lstm":
        assert cell is not None
        g = gates(layer, x, h, h0, c0)
        coef, _ = _lstm_coef(g.values, g.cell, shifted(g.cell, c0))
        dz = coef.clone()  # (T, B, 4, H)
        dz[:, :, :3] *= cell.unsqueeze(2)
        dz[:, :, 3] *= a
    elif kind == "gru":
        g = gates(layer, x, h, h0)
        r, z, n_ = g.values.unbind(2)
        dz = torch.empty_like(g.values)  # (T, B, 3, H)
        dn = (1 - z) * (1 - n_ * n_) * a  # d n's input pre-activation (outside r * (...))
        dz[:, :, 2] = dn
        dz[:, :, 0] = dn * g.hh_n * (r - r * r)
        dz[:, :, 1] = a * (shifted(h, h0) - n_) * (z - z * z)
    elif kind is not None and kind.startswith("rnn:"):
        dz = a * activation_derivative(kind.split(":", 1)[1], layer, x, h, h0)
    else:
        raise ValueError(f"no closed form for layer kind {kind!r}")
    return matmul.linear(dz.flatten(0, 1).flatten(1), w_ih.t().contiguous()).view(*a.shape[:2], -1)


Points = tuple[Tensor, Tensor]  # (steps, examples), each (K, B): where to evaluate


def _take(t: Tensor, at: Points | None) -> Tensor:
    return t if at is None else t[at[0], at[1]]


def _take_prev(t: Tensor, at: Points | None) -> Tensor:
    """t_{s-1} at the points (zero where s = 0), or shifted(t) for every step."""
    if at is None:
        return shifted(t)
    steps, cols = at
    prev = t[(steps - 1).clamp(min=0), cols]
    return prev * (steps > 0).view(*steps.shape, *[1] * (prev.dim() - 2)).to(prev.dtype)


def preactivation_grads(
    layer: nn.Module,
    x: Tensor,
    h: Tensor,
    a: Tensor,
    cell: Tensor | None,
    recurrent: bool = True,
    at: Points | None = None,
) -> Tensor:
    """From the total adjoints a = dL/dh_t (and for lstm `cell` = dL/dc_t), (T, B, H): the
    gradient of the loss w.r.t. W_hh h_{t-1} + b_hh (`recurrent`), or W_ih x_t + b_ih, for
    every t, (T, B, G*H), or only at the points `at` (K, B, G*H). They differ only in gru's n
    gate, which reads r * (W_hn h + b_hn). dL/dW_hh at step t is its outer product with
    h_{t-1}; dL/dx_t is it times W_ih."""
    kind = layer_kind(layer)
    with torch.no_grad():
        if kind == "lstm":
            g = gates(layer, x, h)
            v, c, c_prev = _take(g.values, at), _take(g.cell, at), _take_prev(g.cell, at)
            coef, _ = _lstm_coef(v, c, c_prev)  # (T or K, B, 4, H)
            coef[:, :, :3] *= _take(cell, at).unsqueeze(2)
            coef[:, :, 3] *= _take(a, at)
            return coef.flatten(2)
        if kind == "gru":
            g = gates(layer, x, h)
            r, z, n = _take(g.values, at).unbind(2)
            dn = (1 - z) * (1 - n * n)
            coef = torch.stack(
                [
                    dn * _take(g.hh_n, at) * (r - r * r),
                    (_take_prev(h, at) - n) * (z - z * z),
                    dn * r if recurrent else dn,
                ],
                2,
            )
            return (coef * _take(a, at).unsqueeze(2)).flatten(2)
        act = kind.split(":", 1)[1]
        if at is None or act == "elu":  # elu's f' reads z, recomputed over the whole sequence
            return _take(a * activation_derivative(act, layer, x, h), at)
        # f' reads h alone: at the points only (the credit's 2 of T steps, not all of them)
        return _take(a, at) * activation_derivative(act, layer, x, _take(h, at))


# The closed-form totals of an output tensor, while it lives: the temporal profile, the cell
# path and the credit at the inputs all read them at the same step.
_adjoint_cache: dict[int, tuple[int, Tensor, Tensor | None]] = {}


def total_adjoint(layer: nn.Module, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor | None] | None:
    """After backward, with h.grad retained: (dL/dh_t, dL/dc_t for lstm else None), each
    (T, B, H), by the closed form (None for a layer without one), computed once per h."""
    box = _published.get(id(h))
    if box is not None and "adjoint" in box:  # the training step's own backward solved it
        return box["adjoint"]
    kind = layer_kind(layer)
    if kind is None or kind == "step" or h.grad is None:
        return None
    key = id(h)
    hit = _adjoint_cache.get(key)
    if hit is not None and hit[0] == h._version:
        return hit[1], hit[2]
    cell = torch.empty_like(h) if kind == "lstm" else None
    a = hidden_adjoint(layer, x, h, h.grad, "closed", cell)
    if key not in _adjoint_cache:
        weakref.finalize(h, _adjoint_cache.pop, key, None)
    _adjoint_cache[key] = (h._version, a, cell)
    return a, cell
