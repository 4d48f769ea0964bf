"""An uploaded dataset (task `dataset`): read from the database's chunks once per worker host,
kept in a local cache by SHA-256 (bounded in bytes), split, normalised and served as a task.

- Split: a seeded held-out fraction (`split.val`, `split.seed`), stratified by class for
  per-sequence class ids (every class keeps its share; largest remainders settle the rounding
  so the held-out count is int(N * val)), a plain seeded permutation otherwise.
- Normalisation: per feature, mean and standard deviation over the training split's real
  steps; padded steps stay 0.
- Lengths: a sequence of length L is steps 0..L-1 of x. With readout `last` the answer is read
  at step L-1, with `every` at each step below L; padded steps take no part in the loss or the
  accuracy, so no gradient reaches them.
- Baseline: the best constant answer on the held-out split (the class frequencies' cross-
  entropy, with the majority class's accuracy; or the mean's MSE).
- Credit: the inputs that matter are `key_steps` (default every step), every feature; there
  is no ideal credit to compare with, so the credit instrument reports the per-step credit
  (`credit`, `per_key`) and no ratio."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from core.datasets import iter_chunks
from core.db import get_sessionmaker
from core.errors import Problem
from core.owned import get_dataset
from core.settings import Settings
from core.spec import DatasetTask
from worker.datasets.base import SequenceTask

IGNORE = -1  # class target of a step that does not count
VAL_STEPS = 1_000_000  # held-out sequences x T evaluated per validation (at least 256 sequences)


class DatasetUnavailable(RuntimeError):
    """The experiment's dataset is gone (deleted) or its stored bytes do not match."""


# --- the local cache -------------------------------------------------------------------------


def cached_file(dataset_id: str, owner: str | None, settings: Settings) -> tuple[Path, str]:
    """The dataset's file in this host's cache, read from the database the first time; and its
    kind. Files are named by SHA-256, written under a temporary name and renamed, so workers
    sharing the folder never read half a file."""
    with get_sessionmaker()() as session:
        try:
            row = get_dataset(session, dataset_id, owner or "")
        except Problem as exc:
            raise DatasetUnavailable(f"dataset {dataset_id} does not exist (deleted?)") from exc
        sha, kind = row.sha256, row.kind
        folder = Path(settings.dataset_cache_dir)
        path = folder / f"{sha}.npz"
        if path.exists():
            os.utime(path)  # most recently used: the last to be evicted
            return path, kind
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f".{sha}.{uuid.uuid4().hex}.part"
        h = hashlib.sha256()
        try:
            with part.open("wb") as out:
                for chunk in iter_chunks(session, sha):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != sha:
                raise DatasetUnavailable(f"dataset {dataset_id}: stored bytes do not match {sha}")
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
    evict(folder, settings.dataset_cache_bytes, keep=path)
    return path, kind


def evict(folder: Path, budget: int, keep: Path) -> None:
    """Remove the least recently used files until the folder holds at most `budget` bytes
    (the file in use is kept even when it alone is larger)."""
    files = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in files)
    for p in files:
        if total <= budget:
            break
        if p != keep:
            total -= p.stat().st_size
            p.unlink(missing_ok=True)


def load_task(spec: DatasetTask, owner: str | None, settings: Settings) -> Uploaded:
    path, kind = cached_file(spec.id, owner, settings)
    return Uploaded(spec, read_arrays(path), kind)


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in ("x", "y", "lengths") if k in npz.files}


# --- the task --------------------------------------------------------------------------------


def split_indices(
    n: int, val: float, seed: int, classes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: int(n * val) held out (at least 1, at most n - 1), stratified
    by `classes` when given."""
    n_val = min(max(int(n * val), 1), n - 1)
    rng = np.random.default_rng(seed)
    if classes is None:
        order = rng.permutation(n)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    labels = np.unique(classes)
    members = [rng.permutation(np.flatnonzero(classes == c)) for c in labels]
    exact = np.array([len(m) for m in members]) * n_val / n
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: n_val - quota.sum()]:
        quota[i] += 1
    held = np.concatenate([m[:q] for m, q in zip(members, quota, strict=True)])
    rest = np.concatenate([m[q:] for m, q in zip(members, quota, strict=True)])
    return np.sort(rest), np.sort(held)


class Uploaded(SequenceTask):
    def __init__(self, spec: DatasetTask, arrays: dict[str, np.ndarray], kind: str) -> None:
        x = np.asarray(arrays["x"], dtype=np.float32)
        n, t, f = x.shape
        y = arrays["y"]
        lengths = np.asarray(arrays.get("lengths", np.full(n, t)), dtype=np.int64)
        self.kind, self.seq_len, self.input_size = kind, t, f
        self.classification = kind == "classification"
        per_step = y.ndim == (2 if self.classification else 3)
        if spec.readout == "every" and not per_step:
            raise ValueError("readout 'every' needs a target at every step")
        real = np.arange(t)[None, :] < lengths[:, None]  # (N, T)
        x[~real] = 0.0

        strata = y if self.classification and not per_step else None
        tr, va = split_indices(n, spec.split.val, spec.split.seed, strata)
        if spec.normalize:
            steps = x[tr][real[tr]]  # (real training steps, F)
            mean, std = steps.mean(0), steps.std(0)
            x = (x - mean) / np.where(std > 0, std, 1.0)
            x[~real] = 0.0
        self.varied = bool((lengths < t).any())
        self.every = spec.readout == "every"
        # With lengths, or an answer at every step, the head reads every step and the loss
        # keeps only the steps that count (targets IGNORE / NaN elsewhere), so no gradient
        # reaches a padded step.
        self.readout = "all" if self.every or self.varied else "last"
        target = self._targets(y, lengths, per_step, real)
        self.x_tr, self.y_tr = torch.from_numpy(x[tr]), target[tr]
        n_val = max(256, VAL_STEPS // t)
        self.x_val, self.y_val = torch.from_numpy(x[va][:n_val]), target[va][:n_val]
        if self.classification:
            self.output_size = int((y[real] if per_step else y).max()) + 1
        else:
            self.output_size = 1 if y.ndim == 1 else y.shape[-1]
        self.has_accuracy = self.classification
        self.baseline_loss, self.baseline_accuracy = self._baseline(self.y_val)
        if spec.solved is not None:
            self.solved_accuracy = spec.solved.val_accuracy
            self.solved_loss = spec.solved.val_loss
        self.key_steps = sorted(set(spec.key_steps or range(t)))  # the inputs that matter

    def key_inputs(self, x: Tensor) -> tuple[Tensor, slice] | None:
        # The named steps, the same in every example, every channel; with none named the
        # credit is the profile over every step (key_inputs None), which reads the same.
        if len(self.key_steps) == self.seq_len:
            return None
        steps = torch.tensor(self.key_steps, device=x.device)  # (K,)
        return steps[:, None].expand(-1, x.shape[1]), slice(None)  # (K, B)

    def _targets(
        self, y: np.ndarray, lengths: np.ndarray, per_step: bool, real: np.ndarray
    ) -> Tensor:
        """Per example: (N,) / (N, out) when the answer is read at the last step of full-length
        sequences; else (N, T) class ids with IGNORE, or (N, T, out) with NaN, off the steps
        that count."""
        n, t = real.shape
        last = lengths - 1
        if self.readout == "last":
            picked = y[np.arange(n), last] if per_step else y
            if self.classification:
                return torch.from_numpy(picked.astype(np.int64))
            return torch.from_numpy(picked.astype(np.float32).reshape(n, -1))
        counts = real if self.every else np.arange(t)[None, :] == last[:, None]  # (N, T)
        if self.classification:
            full = y.astype(np.int64) if per_step else np.repeat(y[:, None], t, 1)
            return torch.from_numpy(np.where(counts, full, IGNORE).astype(np.int64))
        out = y.astype(np.float32).reshape(n, t if per_step else 1, -1)
        full = out if per_step else np.repeat(out, t, 1)
        return torch.from_numpy(np.where(counts[..., None], full, np.nan).astype(np.float32))

    def _baseline(self, y: Tensor) -> tuple[float, float | None]:
        """The best constant answer on the held-out split."""
        if self.classification:
            ids = y[y != IGNORE]
            p = torch.bincount(ids, minlength=self.output_size).double() / len(ids)
            p = p[p > 0]
            return float(-(p * p.log()).sum()), float(p.max())
        vals = y.reshape(-1, y.shape[-1]) if y.dim() > 1 else y[:, None]
        vals = vals[~torch.isnan(vals[:, 0])].double()  # (counted steps, out)
        return float(((vals - vals.mean(0)) ** 2).mean()), None

    def batch(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, len(self.y_tr), (n,), generator=gen)
        return self._time_major(self.x_tr[idx], self.y_tr[idx])

    def validation(self, n: int = 256) -> tuple[Tensor, Tensor]:
        return self._time_major(self.x_val, self.y_val)  # the held-out split, whatever n

    def _time_major(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        y = y if self.readout == "last" else y.transpose(0, 1)  # (T, B[, out])
        return x.transpose(0, 1), y  # (T, B, F)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.classification:
            # pred: (B, C) or (T, B, C)
            return F.cross_entropy(
                pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=IGNORE
            )
        if self.readout == "last":
            return F.mse_loss(pred, target)
        counts = ~torch.isnan(target)  # (T, B, out)
        # NaN targets replaced before the subtraction: a NaN times a zero mask is still NaN.
        err = (pred - torch.where(counts, target, torch.zeros_like(target))) ** 2
        return (err * counts).sum() / counts.sum().clamp(min=1)

    def accuracy(self, pred: Tensor, target: Tensor) -> Tensor | None:
        if not self.classification:
            return None
        counts = target != IGNORE
        hits = (pred.argmax(-1) == target) & counts
        return hits.sum().double() / counts.sum().clamp(min=1)
