"""What tests make: small specs, stored rows and finished runs. Shared by every test folder,
instead of one test module importing another's helpers."""

from typing import Any

from core.spec import ExperimentCreate
from core.tables import Experiment, utcnow

# A run of 30 steps on a tiny network: seconds on one thread, every instrument fires.
SMALL: dict[str, Any] = {
    "task": {"seq_len": 10},
    "model": {"hidden_size": 8},
    "train": {"steps": 30, "batch_size": 8},
    "instrument": {"every": 5, "val_every": 10},
}
# The smallest spec worth submitting over HTTP: validated and stored, rarely run.
SMALL_SUBMIT: dict[str, Any] = {
    "task": {"seq_len": 10},
    "train": {"steps": 5},
    "model": {"hidden_size": 8},
}
# For a worker process: a little longer, so a test can watch it run.
PROCESS_SMALL: dict[str, Any] = {
    "task": {"seq_len": 10},
    "model": {"hidden_size": 8},
    "train": {"steps": 40, "batch_size": 8},
    "instrument": {"every": 5, "val_every": 20},
}
# Long enough (several seconds on one thread) to be killed in the middle.
LONG: dict[str, Any] = {
    "task": {"seq_len": 60},
    "model": {"hidden_size": 32},
    "train": {"steps": 1500, "batch_size": 16},
    "instrument": {"every": 50, "val_every": 500},
}
# ReLU with gain 3, plain SGD at lr 1, no clipping: non-finite within a few steps.
EXPLODING: dict[str, Any] = {
    "model": {"activation": "relu", "init": {"gain": 3.0}},
    "train": {"optimizer": {"name": "sgd", "lr": 1.0}, "clip": {"mode": "none"}},
    "task": {"seq_len": 50},
}


def make_spec(base: dict[str, Any] | None = None, **over: Any) -> ExperimentCreate:
    """A validated spec: `base` (default: a 3-step adding run on 8 units, every step
    instrumented) with each top-level section of `over` merged into it."""
    spec: dict[str, Any] = base or {
        "task": {"name": "adding", "seq_len": 12},
        "model": {"cell": "rnn", "hidden_size": 8},
        "train": {"steps": 3, "batch_size": 8, "device": "cpu"},
        "instrument": {"every": 1},
    }
    spec = dict(spec)
    for key, value in over.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return ExperimentCreate.model_validate(spec)


def add_experiment(sessions, spec: dict[str, Any], owner: str = "tester") -> str:
    """A queued experiment row, as POST stores it (without ringing the broker)."""
    normalised = ExperimentCreate.model_validate(spec).model_dump(mode="json")
    with sessions() as s:
        row = Experiment(
            spec=normalised,
            status="queued",
            owner=owner,
            total_steps=normalised["train"]["steps"],
            enqueued_at=utcnow(),
        )
        s.add(row)
        s.commit()
        return row.id


def run_finished(sessions, spec: dict[str, Any] = SMALL) -> str:
    """An experiment stored and run to the end in this process; its id."""
    from worker.runner import run_experiment

    exp_id = add_experiment(sessions, spec)
    assert run_experiment(exp_id) in ("succeeded", "diverged")
    return exp_id


# --- uploaded datasets -----------------------------------------------------------------------


def npz_bytes(**arrays: Any) -> bytes:
    """An .npz as np.savez writes it, in memory."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def digits_arrays() -> dict[str, Any]:
    """scikit-learn's 8x8 digits as the built-in `digits` task reads them (pixels, T=64, F=1,
    scaled to [0, 1]): x (1797, 64, 1) float32, y (1797,) int64."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.reshape(-1, 64, 1) / 16.0).astype(np.float32)
    return {"x": x, "y": data.target.astype(np.int64)}


def lag_arrays(n: int = 256, t: int = 20, lag: int = 3, seed: int = 0) -> dict[str, Any]:
    """A regression with a known lag: y[:, s] = x[:, s - lag] (0 before the lag)."""
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((n, t, 1)).astype(np.float32)
    y = np.zeros_like(x)
    y[:, lag:] = x[:, :-lag]
    return {"x": x, "y": y}


def upload(client, content: bytes, name: str = "data", **form: str):
    """POST /v1/datasets with `content` as the multipart field `file`."""
    return client.post(
        "/v1/datasets", files={"file": (f"{name}.npz", content)}, data={"name": name, **form}
    )
