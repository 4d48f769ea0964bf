"""Each origin of the first non-finite value is found: a weight, a layer's activation at its
time step, the loss, a parameter's gradient (and a global norm that overflowed alone)."""

import math

import torch
from torch.nn import functional as F

from core.spec import ExperimentCreate
from models import RecurrentNet
from worker.instruments.base import Instrument
from worker.nan_origin import locate_nonfinite
from worker.train import train


def spec(**train_over) -> ExperimentCreate:
    return ExperimentCreate.model_validate(
        {
            "task": {"name": "adding", "seq_len": 10},
            "model": {"cell": "rnn", "hidden_size": 8, "num_layers": 2},
            "train": {"steps": 5, "batch_size": 4, "device": "cpu", **train_over},
            "instrument": {"every": 1},
        }
    )


def nonfinite_event(result) -> dict:
    (event,) = [e for e in result.batch.events if e["kind"] == "nonfinite"]
    return event


class Sabotage(Instrument):
    """Does `act(run)` in the hook `hook` of step `at`."""

    def __init__(self, at: int, hook: str, act) -> None:
        self.at, self.act = at, act
        setattr(self, hook, self._maybe)

    def _maybe(self, run, ctx) -> None:
        if ctx.step == self.at:
            self.act(run)


def test_weight_set_to_nan_is_named() -> None:
    def poison(run) -> None:
        with torch.no_grad():
            run.model.rnn[1].weight_hh_l0[3, 2] = math.nan

    result = train(spec(), [Sabotage(1, "after_step", poison)])
    event = nonfinite_event(result)
    assert event["step"] == 2 and result.status == "diverged"  # the next forward reads it
    assert event["detail"]["origin"] == {"where": "weight", "parameter": "rnn.1.weight_hh_l0"}


def test_activation_overflow_located_at_its_time_step() -> None:
    torch.manual_seed(0)
    net = RecurrentNet(2, 1, cell="rnn", activation="relu", hidden_size=4, num_layers=2)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.rnn[0].weight_ih_l0.fill_(1.0)
        net.rnn[0].weight_hh_l0.copy_(torch.eye(4) * 1e4)  # h_t grows by 1e4 a step
        net.rnn[1].weight_ih_l0.copy_(torch.eye(4))
    x = torch.ones(30, 3, 2)
    # Where float32 overflows, from the same network in float64.
    h64 = net.double()(x.double()).layers[0]
    big = (h64.abs() > torch.finfo(torch.float32).max).flatten(1).any(dim=1)
    want = int(big.nonzero()[0])
    assert 0 < want < 29
    net = net.float()
    out = net(x)
    pred = net.head(out.top[-1])
    origin = locate_nonfinite(net, out, pred, F.mse_loss(pred, torch.zeros(3, 1)))
    assert origin == {"where": "activation", "layer": 0, "time_step": want}


def test_activation_overflow_in_training_names_layer_and_step() -> None:
    s = spec(optimizer={"name": "sgd", "lr": 1e-6}, clip={"mode": "none"})
    s.model.activation = "relu"
    s.model.init.recurrent, s.model.init.gain = "identity", 10.0
    s.task.seq_len = 60  # 10^t passes float32's 3.4e38 around t = 38
    origin = nonfinite_event(train(s))["detail"]["origin"]
    assert origin["where"] == "activation" and origin["layer"] == 0
    assert 30 <= origin["time_step"] < 60


def test_loss_overflow_with_finite_prediction() -> None:
    net = RecurrentNet(2, 1, hidden_size=4)
    x = torch.zeros(5, 2, 2)
    out = net(x)
    pred = torch.full((2, 1), 1e30)  # finite in float32; its square is not
    loss = F.mse_loss(pred, torch.zeros(2, 1))
    assert torch.isfinite(pred).all() and not torch.isfinite(loss)
    assert locate_nonfinite(net, out, pred, loss) == {"where": "loss"}


def test_gradient_of_one_parameter_named_in_training() -> None:
    def hook(run) -> None:
        w = run.model.rnn[0].weight_ih_l0
        handle = []
        handle.append(w.register_hook(lambda g: (handle[0].remove(), g * math.inf)[1]))

    result = train(spec(), [Sabotage(3, "before_backward", hook)])
    event = nonfinite_event(result)
    assert event["step"] == 3
    origin = event["detail"]["origin"]
    assert origin["where"] == "gradient" and origin["parameter"] == "rnn.0.weight_ih_l0"
    assert event["detail"]["action"] == "halt" and result.summary["halted_at_step"] == 3


def test_global_norm_overflow_alone_is_reported() -> None:
    net = RecurrentNet(2, 1, hidden_size=4)
    out = net(torch.zeros(3, 2, 2))
    pred = net.head(out.top[-1])
    loss = F.mse_loss(pred, torch.zeros(2, 1))
    loss.backward()
    with torch.no_grad():
        net.rnn[0].weight_hh_l0.grad.fill_(3e38)  # each finite; the sum of squares is not
    origin = locate_nonfinite(net, out, pred, loss)
    assert origin["where"] == "grad_norm" and origin["parameter"] == "rnn.0.weight_hh_l0"
