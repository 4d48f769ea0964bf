"""The adjoints of single loss terms and the lag split of dL/dW_hh, for the reach instrument.

One replay of the network on the first examples repeated a block per term: block k's loss is
the term at step terms[k] alone, so one backward gives each term's direct gradients (the
blocks do not interact), and the closed-form adjoint their totals, dL_s/dh_t for every t."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from worker.instruments.adjoint import hidden_adjoint, layer_kind, preactivation_grads, shifted
from worker.instruments.base import Run, StepContext

MAX_TERMS, MAX_LAGS = 16, 32


def term_steps(t_len: int, recall: list[int]) -> list[int]:
    """The recall steps and evenly spaced earlier loss steps, at most MAX_TERMS in all."""
    earlier = [s for s in range(t_len) if s not in recall]
    room = MAX_TERMS - len(recall)
    picked = earlier[:: math.ceil(len(earlier) / room)] if room > 0 and earlier else []
    return sorted({*recall[:MAX_TERMS], *picked})


def matrix_lags(t_len: int, most: int) -> list[int]:
    return sorted({round(i * (t_len - 1) / max(most - 1, 1)) for i in range(most)})


def split_bins(t_len: int) -> list[list[int]]:
    """Lag bins [0, 1), [1, 2), [2, 4), [4, 8), ... up to T."""
    edges = [0] + [2**i for i in range(t_len.bit_length()) if 2**i < t_len] + [t_len]
    return [[lo, hi] for lo, hi in zip(edges, edges[1:], strict=False)]


def log_rate(values: Tensor) -> float | None:
    """Least-squares slope of ln(values) over their index, positive finite entries only."""
    v = values.double()
    lags = torch.arange(len(v), dtype=torch.float64, device=v.device)
    ok = torch.isfinite(v) & (v > 0)
    if int(ok.sum()) < 2:
        return None
    lags, y = lags[ok], v[ok].log()
    lc = lags - lags.mean()
    return float((lc * (y - y.mean())).sum() / (lc * lc).sum())


@contextmanager
def no_dropout(model: nn.Module) -> Iterator[None]:
    kept = [(m, m.p) for m in model.modules() if isinstance(m, nn.Dropout)]
    for m, _ in kept:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in kept:
            m.p = p


@dataclass
class TermAdjoints:
    """One layer: norms[t, k] = ||dL_{terms[k]}/dh_t|| over the examples and units."""

    terms: list[int]
    recall: list[int]
    norms: Tensor  # (T, n_terms)
    per_example: Tensor  # (T, n_terms, b): over units only
    split: Tensor  # (n_bins,)

    @property
    def reach(self) -> Tensor:
        """Over lags 0 .. min recall step: the recall terms' root-sum-square."""
        ks = [self.terms.index(s) for s in self.recall]
        lags = torch.arange(min(self.recall) + 1, device=self.norms.device)
        rows = torch.tensor(self.recall, device=self.norms.device).unsqueeze(0) - lags[:, None]
        return self.norms[rows, torch.tensor(ks, device=self.norms.device)].norm(dim=1)

    def matrix(self, lags: list[int]) -> Tensor:
        """(len(lags) * n_terms,): row-major (lag, term), NaN where the lag exceeds the step."""
        dev = self.norms.device
        rows = torch.tensor(self.terms, device=dev) - torch.tensor(lags, device=dev)[:, None]
        cols = torch.arange(len(self.terms), device=dev).expand_as(rows)
        out = self.norms[rows.clamp(min=0), cols]  # (L, n)
        return out.masked_fill(rows < 0, math.nan).flatten()

    def key_to_loss(self, key_steps: Tensor) -> float | None:
        """RMS of ||dL_s/dh_k|| over recall terms s and key steps k, over the RMS at k = s."""
        ks = [self.terms.index(s) for s in self.recall]
        b = self.per_example.shape[2]
        steps = key_steps[:, :b]  # (K, b)
        at_keys = self.per_example[steps, :, torch.arange(b, device=steps.device)]  # (K, b, n)
        at_keys = at_keys[:, :, ks].pow(2).sum(1)  # (K, n_recall)
        own = self.norms[self.recall, ks]
        den = own.pow(2).mean().sqrt()
        return None if float(den) == 0 else float(at_keys.mean().sqrt() / den)


def _split(dz: Tensor, h: Tensor, terms: list[int], recall: list[int], b: int, bins) -> Tensor:
    """||sum over recall terms s, steps t with s - t in a bin of dz_t^T h_{t-1}||_F per bin."""
    h_prev = shifted(h)
    parts = dz.new_zeros(len(bins), dz.shape[2], h.shape[2])
    for s in recall:
        cols = slice(terms.index(s) * b, (terms.index(s) + 1) * b)
        for j, (lo, hi) in enumerate(bins):
            t0, t1 = max(s - hi + 1, 1), s - lo + 1  # t in [t0, t1): lag s - t in [lo, hi)
            if t1 > t0:
                parts[j] += torch.einsum("tcg,tch->gh", dz[t0:t1, cols], h_prev[t0:t1, cols])
    return parts.flatten(1).norm(dim=1)


def term_adjoints(
    run: Run, ctx: StepContext, terms: list[int], recall: list[int], examples: int, bins
) -> list[TermAdjoints]:
    """Per layer, the adjoints of each term in `terms` alone on the first `examples` examples
    of the step's batch, with the loss's own normalisation."""
    x, y = ctx.x, ctx.y
    b, n, t_len = min(examples, x.shape[1]), len(terms), x.shape[0]
    xs = x[:, :b].repeat(1, n, 1)  # (T, n*b, I): block k is term k's copy
    ys = y[:, :b].repeat(1, n)
    mask = torch.zeros(t_len, n * b, dtype=x.dtype, device=x.device)
    for k, s in enumerate(terms):
        mask[s, k * b : (k + 1) * b] = 1
    with torch.enable_grad(), no_dropout(run.model):
        out = run.model(xs)
        pred = run.model.head(out.top[-1] if run.task.readout == "last" else out.top)
        per = run.task.step_losses(pred, ys) * (n * b / x.shape[1])  # as in the full batch
        direct = torch.autograd.grad((per * mask).sum(), out.layers)
    got = []
    for layer, xl, h, d in zip(run.model.rnn, out.inputs, out.layers, direct, strict=True):
        h, xl = h.detach(), xl.detach()
        cell = torch.empty_like(h) if layer_kind(layer) == "lstm" else None
        a = hidden_adjoint(layer, xl, h, d, "closed", cell)  # (T, n*b, H)
        dz = preactivation_grads(layer, xl, h, a, cell)
        per_example = a.view(t_len, n, b, -1).norm(dim=3)  # (T, n, b)
        split = _split(dz, h, terms, recall, b, bins)
        got.append(TermAdjoints(terms, recall, per_example.norm(dim=2), per_example, split))
    return got
