"""Credit at the key inputs against an unrolled autograd reference with x.requires_grad, and
the linear cases where the ratio is known in closed form."""

import math

import numpy as np
import pytest
import torch

from core.spec import ExperimentCreate
from tests.factories import make_spec
from worker.instruments.base import Instrument
from worker.instruments.credit import Credit
from worker.train import forward, train


class Reference(Instrument):
    """The whole network again on x.requires_grad: dL/dx and dL/dpred by autograd."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def after_backward(self, run, ctx) -> None:
        with torch.enable_grad():
            x = ctx.x.detach().clone().requires_grad_()
            _, pred = forward(run, x)
            pred.retain_grad()
            run.task.loss(pred, ctx.y).backward(inputs=[x, pred])
        self.seen[ctx.step] = (ctx.x, x.grad, pred.grad)


def expected(task: str, x: torch.Tensor, dx: torch.Tensor, dpred: torch.Tensor) -> tuple:
    """Per key ||dL/dx|| and the ratio to ideal credit, written out from the task's layout."""
    if task == "adding":
        per_example = [
            dx[x[:, b, 1] == 1, b, 0] for b in range(x.shape[1])
        ]  # each (2,): dL/dv at the two marked steps of example b
        per_key = torch.stack(per_example, dim=1).norm(dim=1)
        return per_key, float(per_key.norm() / (math.sqrt(2) * dpred.norm()))
    if task == "copy":
        per_key = torch.stack([dx[t].norm() for t in range(10)])
        return per_key, float(per_key.norm() / dpred[-10:].norm())
    return torch.stack([dx[t].norm() for t in range(dx.shape[0])]), None


TASKS = {
    "adding": {"name": "adding", "seq_len": 15},
    "copy": {"name": "copy", "seq_len": 5},
    "digits": {"name": "digits", "read": "rows"},
}


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("task", list(TASKS))
def test_credit_equals_unrolled_input_gradient(task: str, cell: str) -> None:
    spec = make_spec(model={"cell": cell, "num_layers": 2}, train={"steps": 2, "dtype": "float64"})
    spec = ExperimentCreate.model_validate({**spec.model_dump(), "task": TASKS[task]})
    ref = Reference()
    res = train(spec, [ref, Credit()])
    steps, credit = res.batch.series["credit"]
    assert steps == [0, 1]
    for row, step in enumerate(steps):
        per_key, ratio = expected(task, *ref.seen[step])
        np.testing.assert_allclose(credit[row], per_key.numpy(), rtol=1e-10)
        window = res.summary["credit"]["window"][row]
        assert window["step"] == step and len(window["key_steps"]) == len(per_key)
        if ratio is None:
            assert window["ratio"] is None and "credit/ratio" not in res.batch.series
        else:
            assert res.batch.series["credit/ratio"][1][row, 0] == pytest.approx(ratio, rel=1e-10)
            assert window["ratio"] == pytest.approx(ratio, rel=1e-10)


class SetWeights(Instrument):
    def __init__(self, recurrent: str) -> None:
        self.recurrent = recurrent

    def start(self, run) -> None:
        layer = run.model.rnn[0]
        n = layer.hidden_size
        with torch.no_grad():
            if self.recurrent == "identity":
                layer.weight_hh_l0.copy_(torch.eye(n))
            else:  # a contraction: every singular value 0.5
                q, _ = torch.linalg.qr(
                    torch.randn(n, n, generator=torch.Generator().manual_seed(3))
                )
                layer.weight_hh_l0.copy_(0.5 * q)


def test_identity_linear_rnn_ratio_is_the_readout_path() -> None:
    """h_t = W_ih x_t + b + h_{t-1}: dL/dv_t = dL/dpred * (w_head . W_ih[:, 0]) for every t,
    so the ratio is |w_head . W_ih[:, 0]| exactly, whatever the length."""
    spec = make_spec(
        task={"name": "adding", "seq_len": 40},
        model={"activation": "linear"},
        train={"steps": 1, "dtype": "float64"},
    )
    ins = Credit()

    class Path(Instrument):
        def after_backward(self, run, ctx) -> None:
            self.path = float(
                run.model.head.weight[0].detach() @ run.model.rnn[0].weight_ih_l0[:, 0].detach()
            )

    path = Path()
    res = train(spec, [SetWeights("identity"), path, ins])
    window = res.summary["credit"]["window"][0]
    assert window["ratio"] == pytest.approx(abs(path.path), rel=1e-10)
    # the same credit at every lag: the key inputs' against the last step's is exactly 1
    assert window["decay"] == pytest.approx(1.0, rel=1e-10)


def test_contracting_tanh_rnn_gives_no_credit() -> None:
    spec = make_spec(
        task={"name": "adding", "seq_len": 60},
        model={"activation": "tanh"},
        train={"steps": 1, "dtype": "float64"},
    )
    res = train(spec, [SetWeights("contraction"), Credit()])
    window = res.summary["credit"]["window"][0]
    first, second = window["per_key"]
    ideal = math.hypot(first, second) / (math.sqrt(2) * window["ratio"])  # ||dL/dpred||
    # The first marker is at least 30 steps back: 0.5^30 ~ 1e-9 of the ideal at most; the
    # second may sit anywhere in the second half, so the ratio over both stays below 1/sqrt 2.
    assert first / ideal < 1e-6 and window["ratio"] < 0.75


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_credit_of_a_layer_without_closed_form_is_recomputed(cell: str) -> None:
    """Layer norm inside the recurrence: no closed-form adjoint, so the layer is recomputed."""
    spec = make_spec(model={"cell": cell, "norm": "layer"}, train={"steps": 2, "dtype": "float64"})
    ref = Reference()
    res = train(spec, [ref, Credit()])
    for row, step in enumerate(res.batch.series["credit"][0]):
        per_key, ratio = expected("adding", *ref.seen[step])
        np.testing.assert_allclose(res.batch.series["credit"][1][row], per_key.numpy(), rtol=1e-10)
        assert res.summary["credit"]["window"][row]["ratio"] == pytest.approx(ratio, rel=1e-10)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_preactivation_grads_at_points_are_the_full_ones_taken_there(cell: str) -> None:
    from models import RecurrentNet
    from worker.instruments.adjoint import preactivation_grads, total_adjoint
    from worker.instruments.temporal import retain

    torch.manual_seed(0)
    net = RecurrentNet(3, 1, cell=cell, hidden_size=6).double()
    x = torch.randn(9, 4, 3, dtype=torch.float64)
    out = net(x)
    retain(out)
    net.head(out.top).pow(2).sum().backward()
    layer, h = net.rnn[0], out.layers[0]
    shared = total_adjoint(layer, x, h)
    steps = torch.tensor([[0, 3, 8, 0], [5, 0, 1, 8]])  # (K, B), step 0 included
    cols = torch.arange(4).expand_as(steps)
    for recurrent in (True, False):
        full = preactivation_grads(layer, x, h, *shared, recurrent=recurrent)
        some = preactivation_grads(layer, x, h, *shared, recurrent=recurrent, at=(steps, cols))
        assert torch.equal(some, full[steps, cols])
