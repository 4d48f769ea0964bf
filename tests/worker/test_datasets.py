"""The tasks: what their inputs and targets are, and their baselines."""

import math

import pytest
import torch
from torch.nn import functional as F

from worker.datasets.adding import Adding
from worker.datasets.copy import BLANK, DELIMITER, N_COPY, N_SYMBOLS, CopyMemory
from worker.datasets.digits import Digits, _split


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- adding ------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [2, 9, 50])
def test_adding_has_one_marker_per_half_and_targets_their_sum(t: int) -> None:
    x, y = Adding(t).batch(500, gen())
    assert x.shape == (t, 500, 2) and y.shape == (500, 1)
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) <= {0.0, 1.0}
    half = t // 2
    assert (markers[:half].sum(0) == 1).all() and (markers[half:].sum(0) == 1).all()
    torch.testing.assert_close(y[:, 0], (values * markers).sum(0))


def test_adding_baseline_is_the_mse_of_always_answering_one() -> None:
    task = Adding(20)
    x, y = task.batch(50_000, gen(1))
    mse = float(task.loss(torch.ones_like(y), y))
    assert task.baseline_loss == pytest.approx(1 / 6)
    assert mse == pytest.approx(1 / 6, abs=0.005)
    assert task.is_solved(0.009, None) and not task.is_solved(0.05, None)


# --- copy --------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [1, 30, 100])
def test_copy_inputs_and_targets(delay: int) -> None:
    task = CopyMemory(delay)
    n, t = 64, delay + 2 * N_COPY
    x, y = task.batch(n, gen())
    assert task.seq_len == t and x.shape == (t, n, N_SYMBOLS + 2) and y.shape == (t, n)
    assert (x.sum(-1) == 1).all()  # one-hot
    seq = x.argmax(-1)  # (T, B)
    symbols = seq[:N_COPY]
    assert ((symbols >= 1) & (symbols <= N_SYMBOLS)).all()
    assert (seq[t - N_COPY - 1] == DELIMITER).all()
    rest = torch.cat([seq[N_COPY : t - N_COPY - 1], seq[t - N_COPY :]])
    assert (rest == BLANK).all()
    assert (y[: t - N_COPY] == BLANK).all()
    assert torch.equal(y[t - N_COPY :], symbols)  # repeat the symbols after the delimiter


@pytest.mark.parametrize("delay", [100, 200])
def test_copy_baseline_is_blanks_then_uniform_guesses(delay: int) -> None:
    task = CopyMemory(delay)
    assert task.baseline_loss == pytest.approx(10 * math.log(8) / (delay + 20))
    x, y = task.batch(32, gen())
    logits = torch.full((task.seq_len, 32, N_SYMBOLS + 1), -1e9)
    logits[:-N_COPY, :, BLANK] = 0.0  # certain of the blanks
    logits[-N_COPY:, :, 1:] = 0.0  # uniform over the 8 symbols
    assert float(task.loss(logits, y)) == pytest.approx(task.baseline_loss, rel=1e-5)
    assert float(task.accuracy(logits.clone().fill_(0), y)) < 0.99


# --- digits ------------------------------------------------------------------------------


def test_digits_train_and_validation_are_disjoint() -> None:
    x_tr, y_tr, x_val, y_val = _split()
    assert len(y_tr) + len(y_val) == 1797 and len(y_val) == 359
    seen = {img.numpy().tobytes() for img in x_tr}
    assert not any(img.numpy().tobytes() in seen for img in x_val)
    assert set(y_val.tolist()) == set(range(10))


@pytest.mark.parametrize(("read", "t", "width"), [("rows", 8, 8), ("pixels", 64, 1)])
def test_digits_read_row_by_row_or_pixel_by_pixel(read: str, t: int, width: int) -> None:
    task = Digits(read, permuted=False)
    x, y = task.validation()
    _, _, x_val, y_val = _split()
    assert task.seq_len == t and x.shape == (t, len(y_val), width)
    assert torch.equal(y, y_val)
    # step s of example b is the s-th row (or pixel) of the image, read in order
    torch.testing.assert_close(x.transpose(0, 1).reshape(len(y), 64), x_val.reshape(-1, 64))
    xb, yb = task.batch(16, gen())
    assert xb.shape == (t, 16, width) and yb.shape == (16,)
    assert task.baseline_loss == pytest.approx(math.log(10))
    assert float(task.loss(torch.zeros(16, 10), yb)) == pytest.approx(math.log(10))


def test_permuted_digits_use_one_fixed_permutation() -> None:
    a, b = Digits("pixels", permuted=True), Digits("pixels", permuted=True)
    assert a.perm is not None and torch.equal(a.perm, b.perm)
    assert sorted(a.perm.tolist()) == list(range(64)) and a.perm.tolist() != list(range(64))
    plain, _ = Digits("pixels", permuted=False).validation()
    perm, _ = a.validation()
    torch.testing.assert_close(perm, plain[a.perm])  # the same permutation for every image
    x1, _ = a.batch(8, gen(5))
    x2, _ = Digits("pixels", permuted=False).batch(8, gen(5))
    torch.testing.assert_close(x1, x2[a.perm])


def test_digits_accuracy_and_solved() -> None:
    task = Digits("rows", permuted=False)
    y = torch.tensor([0, 1, 2, 3])
    pred = F.one_hot(torch.tensor([0, 1, 2, 0]), 10).float()
    assert float(task.accuracy(pred, y)) == 0.75
    assert task.is_solved(0.0, 0.95) and not task.is_solved(0.0, 0.5)


# --- validation sets and the baseline on them ------------------------------------------


def test_generated_tasks_validate_on_4096_examples_and_digits_on_its_split() -> None:
    from worker.datasets.base import VAL_SIZE

    assert VAL_SIZE >= 4096
    for task in (Adding(50), CopyMemory(20)):
        x, _ = task.validation()
        assert x.shape[1] == VAL_SIZE
    _, _, _, y_val = _split()
    assert Digits("rows", permuted=False).validation()[1].shape == y_val.shape


@pytest.mark.parametrize("task", [Adding(50), Adding(200), CopyMemory(30), Digits("rows", False)])
def test_constant_baseline_is_the_loss_of_the_best_constant_answer(task) -> None:
    """Reference: the task's own loss of the best constant prediction, built explicitly."""
    x, y = task.validation()
    if isinstance(task, Adding):
        pred = y.mean(0, keepdim=True).expand_as(y)  # the mean minimises the MSE
    elif isinstance(task, CopyMemory):
        freq = torch.stack([torch.bincount(r, minlength=N_SYMBOLS + 1) for r in y]).double()
        logp = (freq / y.shape[1]).clamp_min(1e-300).log()  # (T, 9): each position's frequencies
        pred = logp.unsqueeze(1).expand(-1, y.shape[1], -1)
    else:
        freq = torch.bincount(y, minlength=10).double() / len(y)
        pred = freq.log().unsqueeze(0).expand(len(y), -1)
    want = float(task.loss(pred.double(), y.double() if y.is_floating_point() else y))
    assert task.constant_baseline(y) == pytest.approx(want, rel=1e-6)
    # on 4096 examples the set's own baseline is within sampling error of the theoretical one
    assert task.constant_baseline(y) == pytest.approx(task.baseline_loss, rel=0.05)
