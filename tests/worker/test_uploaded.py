"""The uploaded-dataset task (worker/datasets/uploaded.py) against exact references: the
split, the normalisation, the baselines, lengths in the loss and the gradient, the cache."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from core.spec import DatasetTask
from tests.factories import digits_arrays, lag_arrays, make_spec
from worker.datasets.digits import Digits
from worker.datasets.uploaded import IGNORE, Uploaded, evict, split_indices
from worker.train import build_model, train


def task_spec(**over) -> DatasetTask:
    return DatasetTask.model_validate({"id": "d", **over})


def test_split_is_seeded_stratified_and_int_n_val() -> None:
    classes = np.repeat(np.arange(3), [50, 30, 20])
    tr, va = split_indices(100, 0.25, 7, classes)
    assert len(va) == 25 and len(tr) == 75 and not set(tr) & set(va)
    # 12.5, 7.5, 5: the two halves tie, and a tie goes to the first class
    assert np.bincount(classes[va]).tolist() == [13, 7, 5]
    again = split_indices(100, 0.25, 7, classes)
    assert all((a == b).all() for a, b in zip((tr, va), again, strict=True))
    assert not (split_indices(100, 0.25, 8, classes)[1] == va).all()


def test_digits_upload_has_the_builtin_split_size() -> None:
    task = Uploaded(task_spec(normalize=False), digits_arrays(), "classification")
    builtin = Digits("pixels", False)
    assert len(task.y_val) == len(builtin.validation()[1]) == 359
    assert len(task.y_tr) == 1797 - 359
    assert task.seq_len == builtin.seq_len == 64 and task.input_size == 1
    x, y = task.validation()
    assert x.shape == (64, 359, 1) and y.shape == (359,)
    # stratified: every class within one image of its share
    shares = torch.bincount(task.y_val, minlength=10).numpy()
    expected = np.bincount(digits_arrays()["y"]) * 359 / 1797
    assert (np.abs(shares - expected) < 1).all()


def test_normalisation_uses_the_training_split_only() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (40, 5, 2)).astype(np.float32)
    x[:, :, 1] *= 10
    y = rng.integers(0, 2, 40)
    y[:2] = [0, 1]
    raw = Uploaded(task_spec(normalize=False), {"x": x, "y": y}, "classification")
    task = Uploaded(task_spec(), {"x": x, "y": y}, "classification")
    flat = raw.x_tr.reshape(-1, 2).double()
    mean, std = flat.mean(0), flat.std(0, unbiased=False)
    torch.testing.assert_close(
        task.x_tr.double(), (raw.x_tr.double() - mean) / std, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        task.x_val.double(), (raw.x_val.double() - mean) / std, atol=1e-5, rtol=1e-5
    )


def test_baselines_are_the_best_constant_answer_on_the_held_out_split() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 4, 1)).astype(np.float32)
    y = rng.choice(3, 200, p=[0.6, 0.3, 0.1])
    task = Uploaded(task_spec(), {"x": x, "y": y}, "classification")
    freq = torch.bincount(task.y_val, minlength=3).double() / len(task.y_val)
    const = freq.log().expand(len(task.y_val), 3)
    assert task.baseline_loss == pytest.approx(float(task.loss(const, task.y_val)), rel=1e-9)
    assert task.baseline_accuracy == pytest.approx(float(freq.max()))
    worse = (freq + torch.tensor([0.05, -0.03, -0.02])).log().expand(len(task.y_val), 3)
    assert float(task.loss(worse, task.y_val)) > task.baseline_loss

    reg = Uploaded(task_spec(), lag_arrays(n=50, t=6, lag=2), "regression")
    assert reg.readout == "last"  # no per-step readout asked: the last step's target
    mean = reg.y_val.mean(0, keepdim=True)
    assert reg.baseline_loss == pytest.approx(
        float(F.mse_loss(mean.expand_as(reg.y_val), reg.y_val)), rel=1e-6
    )
    assert reg.baseline_accuracy is None


def padded_classification(n: int = 12, t: int = 7, f: int = 3, seed: int = 2):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, n)
    lengths[0] = t
    x = rng.standard_normal((n, t, f)).astype(np.float32)
    x[np.arange(t)[None, :] >= lengths[:, None]] = 99.0  # padding: never read
    y = np.arange(n) % 3
    return {"x": x, "y": y, "lengths": lengths}


def test_lengths_read_each_sequence_at_its_last_step_and_no_gradient_reaches_padding() -> None:
    arrays = padded_classification()
    task = Uploaded(
        task_spec(split={"val": 0.25, "seed": 0}, normalize=False), arrays, "classification"
    )
    assert task.readout == "all"
    spec = make_spec(model={"cell": "gru", "hidden_size": 6}, train={"dtype": "float64"})
    torch.manual_seed(0)
    net = build_model(spec, task)
    x, y = task.validation()
    x = x.double().requires_grad_()
    out = net(x)
    pred = net.head(out.top)  # (T, B, C)
    loss = task.loss(pred, y)
    loss.backward()
    # reference: each sequence alone, cut to its length, read at its last step
    lengths = (y != IGNORE).float().argmax(0)  # the step that counts, per example
    ref = []
    for b in range(x.shape[1]):
        L = int(lengths[b]) + 1
        xb = x.detach()[:L, b : b + 1]
        ref.append(F.cross_entropy(net.head(net(xb).top[-1]), y[L - 1, b : b + 1]))
    torch.testing.assert_close(loss, torch.stack(ref).mean())
    for b in range(x.shape[1]):
        L = int(lengths[b]) + 1
        assert (x.grad[L:, b] == 0).all()  # padded inputs: not a trace of gradient
        assert x.grad[:L, b].abs().sum() > 0


def test_every_step_regression_with_lengths_counts_only_real_steps() -> None:
    arrays = lag_arrays(n=10, t=5, lag=1)
    arrays["lengths"] = np.array([5, 3, 1, 4, 5, 2, 5, 5, 3, 4])
    task = Uploaded(task_spec(readout="every", normalize=False), arrays, "regression")
    x, y = task.validation()
    pred = torch.randn(*y.shape, dtype=torch.float64, requires_grad=True)
    loss = task.loss(pred, y.double())
    loss.backward()
    counts = ~torch.isnan(y)
    ref = ((pred.detach() - y.double())[counts] ** 2).mean()
    torch.testing.assert_close(loss.detach(), ref)
    assert (pred.grad[~counts] == 0).all() and torch.isfinite(pred.grad).all()


def test_digits_upload_learns_like_the_builtin_digits(one_torch_thread) -> None:
    """The same images through both routes: accuracy within noise after a short run (rows,
    T=8, so it takes seconds)."""
    arrays = digits_arrays()
    arrays["x"] = arrays["x"].reshape(-1, 8, 8)
    base = {
        "model": {"cell": "gru", "hidden_size": 32},
        "train": {
            "steps": 300,
            "batch_size": 64,
            "device": "cpu",
            "optimizer": {"name": "adam", "lr": 0.01},
        },
        "instrument": {"every": 50, "val_every": 300},
    }
    builtin = train(make_spec(base, task={"name": "digits", "read": "rows"}))
    spec = make_spec(base, task={"name": "dataset", "id": "d", "normalize": False})
    uploaded = train(spec, task=Uploaded(spec.task, arrays, "classification"))
    a, b = builtin.summary["accuracy"], uploaded.summary["accuracy"]
    print(f"accuracy: built-in digits {a:.3f}, uploaded digits {b:.3f}")
    assert a > 0.8 and b > 0.8 and abs(a - b) < 0.06
    assert uploaded.summary["baseline_loss"] == pytest.approx(math.log(10), abs=0.01)


def test_cache_evicts_least_recently_used_files(tmp_path) -> None:
    import os

    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.npz"
        p.write_bytes(b"x" * 100)
        os.utime(p, (1000 + i, 1000 + i))
        paths.append(p)
    os.utime(paths[0], (2000, 2000))  # used last
    evict(tmp_path, 250, keep=paths[3])
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["0.npz", "3.npz"]
    evict(tmp_path, 50, keep=paths[3])  # the file in use stays even alone over the bound
    assert [p.name for p in tmp_path.glob("*.npz")] == ["3.npz"]
