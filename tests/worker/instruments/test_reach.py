"""The reach of single loss terms against per-term autograd: the network unrolled here with
retain_grad on every h_t and its own copy of W_hh at every step, the loss of one step s alone
backward; and the identity linear rnn, whose reach is flat in closed form."""

import math

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from core.spec import ExperimentCreate
from tests.factories import make_spec
from worker.instruments.base import Instrument
from worker.instruments.loss import LossCurve
from worker.instruments.per_term import matrix_lags, split_bins, term_steps
from worker.instruments.reach import EXAMPLES, Reach
from worker.train import train


def unrolled(net, x: Tensor, cell: str) -> tuple[list[list[Tensor]], list[list[Tensor]], Tensor]:
    """Per layer the h_t (retain_grad) and the per-step W_hh copies; the logits (T, B, O)."""
    inp, hs_all, ws_all = x, [], []
    for layer in net.rnn:
        wi, bi, bh = layer.weight_ih_l0, layer.bias_ih_l0, layer.bias_hh_l0
        h = c = x.new_zeros(x.shape[1], net.hidden_size)
        hs, ws = [], []
        for t in range(x.shape[0]):
            w = layer.weight_hh_l0.detach().clone().requires_grad_()
            gx, gh = inp[t] @ wi.T + bi, h @ w.T + bh
            if cell == "lstm":
                i, f, g, o = (gx + gh).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            elif cell == "gru":
                (xr, xz, xn), (hr, hz, hn) = gx.chunk(3, dim=1), gh.chunk(3, dim=1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                h = (1 - z) * torch.tanh(xn + r * hn) + z * h
            else:
                h = torch.tanh(gx + gh)
            h.retain_grad()
            hs.append(h)
            ws.append(w)
        hs_all.append(hs)
        ws_all.append(ws)
        inp = torch.stack(hs)
    return hs_all, ws_all, net.head(inp)


class Reference(Instrument):
    """At every step, for each term s alone on the first EXAMPLES examples: ||dL_s/dh_t||
    per layer (T, n_terms) and the W_hh gradient of every step."""

    def __init__(self, cell: str) -> None:
        self.cell = cell
        self.seen: dict[int, tuple[list[np.ndarray], list[list[list[Tensor]]]]] = {}

    def after_backward(self, run, ctx) -> None:
        terms = term_steps(ctx.x.shape[0], run.task.recall_steps())
        b, (t_len, batch) = EXAMPLES, ctx.y.shape
        norms = [np.zeros((t_len, len(terms))) for _ in run.model.rnn]
        w_grads: list[list[list[Tensor]]] = [[] for _ in run.model.rnn]
        for k, s in enumerate(terms):
            with torch.enable_grad():
                hs, ws, logits = unrolled(run.model, ctx.x[:, :b], self.cell)
                term = F.cross_entropy(logits[s], ctx.y[s, :b], reduction="sum") / (t_len * batch)
                term.backward(inputs=[h for layer in hs for h in layer] + sum(ws, []))
            for layer, (h_l, w_l) in enumerate(zip(hs, ws, strict=True)):
                for t in range(t_len):
                    g = h_l[t].grad
                    norms[layer][t, k] = 0.0 if g is None else float(g.norm())
                w_grads[layer].append(
                    [torch.zeros_like(w) if w.grad is None else w.grad for w in w_l]
                )
        self.seen[ctx.step] = (norms, w_grads)


def copy_spec(cell: str, **over) -> ExperimentCreate:
    return make_spec(
        task={"name": "copy", "seq_len": 5},  # T = 25
        model={"cell": cell, "num_layers": 2, **over.get("model", {})},
        train={"steps": 3, "dtype": "float64"},
        instrument={"every": 1, "dynamics_every": over.get("dynamics_every", 1)},
    )


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_reach_equals_per_term_autograd(cell: str) -> None:
    spec = copy_spec(cell)
    ref = Reference(cell)
    res = train(spec, [ref, Reach()])
    summary = res.summary["reach"]
    t_len, recall = 25, list(range(15, 25))
    terms = summary["terms"]
    assert terms == term_steps(t_len, recall) and set(recall) <= set(terms)
    assert summary["lags"] == list(range(t_len)) == matrix_lags(t_len, 32)  # every lag at T=25
    assert summary["recall"] == recall and len(summary["window"]) == 3
    bins = split_bins(t_len)
    assert bins[0] == [0, 1] and bins[-1][1] == t_len
    ks = [terms.index(s) for s in recall]
    for row, step in enumerate(res.batch.series["reach/0"][0]):
        norms, w_grads = ref.seen[step]
        for layer in (0, 1):
            want = norms[layer]
            assert np.all(want[np.arange(t_len)[:, None] > np.array(terms)[None, :]] == 0)
            # The matrix: lag x term, NaN where the lag passes the start.
            got = res.batch.series[f"reach/{layer}/matrix"][1][row].reshape(t_len, len(terms))
            for k, s in enumerate(terms):
                np.testing.assert_allclose(got[: s + 1, k], want[s::-1, k], rtol=1e-9, atol=0)
                assert np.isnan(got[s + 1 :, k]).all()
            # The vector over lags: the recall terms' root-sum-square.
            lags = np.arange(min(recall) + 1)
            vec = np.sqrt(sum(want[s - lags, k] ** 2 for s, k in zip(recall, ks, strict=True)))
            np.testing.assert_allclose(res.batch.series[f"reach/{layer}"][1][row], vec, rtol=1e-9)
            # Pascanu's split: the recall terms' dL/dW_hh at steps t with s - t in each bin.
            parts = [
                sum(
                    w_grads[layer][k][t]
                    for s, k in zip(recall, ks, strict=True)
                    for t in range(max(s - hi + 1, 0), s - lo + 1)
                )
                for lo, hi in bins
            ]
            split = [float(p.norm()) for p in parts]
            got_split = res.batch.series[f"reach/{layer}/w_hh_split"][1][row]
            np.testing.assert_allclose(got_split, split, rtol=1e-9, atol=1e-18)
            entry = summary["window"][row]["layers"][layer]
            assert entry["w_hh_split"] == pytest.approx(split, rel=1e-9)
            slope = np.polyfit(lags[1:], np.log(vec[1:]), 1)[0]
            assert entry["log_rate_per_step"] == pytest.approx(slope, rel=1e-9)
            at_keys = [want[key, k] ** 2 for k in ks for key in range(10)]
            own = [want[s, k] ** 2 for s, k in zip(recall, ks, strict=True)]
            ratio = math.sqrt(np.mean(at_keys) / np.mean(own))
            assert entry["ratio_key_to_loss"] == pytest.approx(ratio, rel=1e-9)


def test_identity_linear_rnn_reaches_every_step_in_full() -> None:
    """h_t = W_ih x_t + b + h_{t-1}: dL_s/dh_t = W_head^T dL_s/dlogits_s for every t <= s, so
    every term's reach is flat (log-rate 0) and the key steps get what the loss step gets."""

    class Identity(Instrument):
        def start(self, run) -> None:
            with torch.no_grad():
                run.model.rnn[0].weight_hh_l0.copy_(torch.eye(run.model.hidden_size))

    spec = make_spec(
        task={"name": "copy", "seq_len": 30},
        model={"activation": "linear"},
        train={"steps": 1, "dtype": "float64"},
        instrument={"every": 1},
    )
    res = train(spec, [Identity(), Reach()])
    (entry,) = res.summary["reach"]["window"][0]["layers"]
    assert abs(entry["log_rate_per_step"]) < 1e-12
    assert entry["ratio_key_to_loss"] == pytest.approx(1.0, rel=1e-12)
    terms, lags = res.summary["reach"]["terms"], res.summary["reach"]["lags"]
    matrix = res.batch.series["reach/0/matrix"][1][0].reshape(len(lags), len(terms))
    for k, s in enumerate(terms):
        col = matrix[[i for i, tau in enumerate(lags) if tau <= s], k]
        np.testing.assert_allclose(col, col[0], rtol=1e-12)


def test_reach_leaves_training_alone_and_runs_on_the_dynamics_steps() -> None:
    """With dropout on: the replay draws no random numbers and touches no gradient, so the
    run's losses are bit-identical with and without it."""
    spec = copy_spec("lstm", model={"dropout": 0.3}, dynamics_every=2)
    spec = ExperimentCreate.model_validate(
        {**spec.model_dump(), "train": {**spec.train.model_dump(), "steps": 5}}
    )
    plain = train(spec, [LossCurve()])
    seen = train(spec, [LossCurve(), Reach()])
    assert seen.batch.series["loss"][1].tolist() == plain.batch.series["loss"][1].tolist()
    assert seen.batch.series["reach/1"][0] == [0, 2, 4]  # every 2nd instrumented step
    assert [w["step"] for w in seen.summary["reach"]["window"]] == [0, 2, 4]


def test_no_reach_for_a_task_with_one_loss_step() -> None:
    for task in ({"name": "adding", "seq_len": 10}, {"name": "digits", "read": "rows"}):
        spec = ExperimentCreate.model_validate({**make_spec().model_dump(), "task": task})
        res = train(spec, [Reach()])
        assert res.summary["reach"] is None
        assert not any(name.startswith("reach") for name in res.batch.series)


def test_step_losses_sum_to_the_loss() -> None:
    from core.spec import CopyTask
    from worker.datasets import make_task

    task = make_task(CopyTask(name="copy", seq_len=7))
    x, y = task.batch(5, torch.Generator().manual_seed(0))
    pred = torch.randn(x.shape[0], 5, task.output_size, dtype=torch.float64)
    assert float(task.step_losses(pred, y).sum()) == pytest.approx(float(task.loss(pred, y)))
    assert task.recall_steps() == list(range(x.shape[0] - 10, x.shape[0]))
