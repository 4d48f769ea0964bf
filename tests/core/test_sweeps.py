"""Sweep expansion and aggregation, as pure functions."""

import pytest

from core.errors import Problem
from core.spec import MAX_SWEEP_EXPERIMENTS, SweepCreate
from core.sweeps import aggregate, effects, expand, rank_key, resolve

BIG = 1e30


def test_grid_times_seeds_with_dotted_paths_and_variants() -> None:
    req = SweepCreate(
        base={"train": {"steps": 10}},
        grid={
            "model.cell": ["rnn", "lstm"],
            "task.seq_len": [5, 6, 7],
            "variant": [
                {"label": "clip", "train": {"clip": {"mode": "norm"}}},
                {"label": "no clip", "train": {"clip": {"mode": "none"}}},
            ],
        },
        seeds=[3, 4],
    )
    points = expand(req, BIG)
    assert len(points) == 2 * 3 * 2 * 2
    params, spec = points[0]
    assert params == {"model.cell": "rnn", "task.seq_len": 5, "variant": "clip"}
    assert spec.seed == 3 and spec.task.seq_len == 5 and spec.train.steps == 10
    last_params, last = points[-1]
    assert last_params == {"model.cell": "lstm", "task.seq_len": 7, "variant": "no clip"}
    assert last.model.cell == "lstm" and last.train.clip.mode == "none" and last.seed == 4
    assert last.train.steps == 10  # the variant merged into base, it did not replace train


def test_an_invalid_point_names_itself() -> None:
    req = SweepCreate(grid={"model.hidden_size": [8, 100_000]})
    with pytest.raises(Problem) as err:
        expand(req, BIG)
    assert err.value.status == 422
    assert err.value.extra["point"] == {"model.hidden_size": 100_000}
    assert err.value.extra["errors"][0]["field"] == "model.hidden_size"


def test_a_typo_in_a_path_is_rejected() -> None:
    with pytest.raises(Problem) as err:
        expand(SweepCreate(grid={"model.hiden_size": [8]}), BIG)
    assert err.value.extra["errors"][0]["field"] == "model.hiden_size"


def test_size_cap_and_budget() -> None:
    too_many = SweepCreate(
        grid={"train.steps": list(range(1, 21)), "task.seq_len": list(range(2, 22))}
    )
    with pytest.raises(Problem) as err:
        expand(too_many, BIG)
    assert err.value.extra["experiments"] == 400 > MAX_SWEEP_EXPERIMENTS
    with pytest.raises(Problem) as err:
        expand(SweepCreate(grid={"train.steps": [10]}), 1.0)
    assert err.value.kind == "budget"


@pytest.mark.parametrize(
    ("name", "variants", "label"),
    [("adding-mitigations", 8, "LSTM"), ("copy-mitigations", 6, "LSTM"), ("flossing", 4, None)],
)
def test_preset_resolves_and_is_valid(name: str, variants: int, label: str | None) -> None:
    req = resolve(SweepCreate(preset=name))
    points = expand(req, BIG)
    assert len(points) == 3 * variants * 2
    labels = {p["variant"] for p, _ in points}
    assert "tanh RNN" in labels and (label is None or label in labels)
    with pytest.raises(Problem):
        resolve(SweepCreate(preset="nope"))


def run(
    status: str,
    loss: float | None,
    solved: int | None = None,
    nan: int = 0,
    grad: float = 1.0,
    horizon: float | None = None,
    verdict: str | None = None,
) -> dict:
    return {
        "status": status,
        "summary": {
            "final_val_loss": loss,
            "solved_at_step": solved,
            "nan_events": nan,
            "max_grad_norm": grad,
            "beat_baseline_at_step": solved,
        },
        "diagnosis": {"verdict": verdict, "evidence": {"effective_horizon": horizon}}
        if verdict
        else None,
    }


def test_aggregate_against_hand_computed_values() -> None:
    runs = [
        run("succeeded", 0.01, solved=300, grad=2.0, horizon=40, verdict="healthy"),
        run("succeeded", 0.03, solved=500, grad=5.0, horizon=60, verdict="healthy"),
        run("diverged", None, nan=1, grad=7.0, verdict="diverged"),
        run("running", None),
    ]
    s = aggregate(runs)
    assert s["runs"] == 4 and s["finished"] == 3
    assert s["final_val_loss"]["mean"] == pytest.approx(0.02)
    assert s["final_val_loss"]["std"] == pytest.approx(0.01)  # population std of 0.01, 0.03
    assert s["solved"] == 2 and s["solved_fraction"] == pytest.approx(2 / 3)
    assert s["steps_to_solve"] == {"mean": 400, "median": 400}
    assert s["diverged"] == 1 and s["nan_events"] == 1 and s["max_grad_norm"] == 7.0
    assert s["effective_horizon"]["mean"] == 50
    assert s["verdicts"] == {"healthy": 2, "diverged": 1}


def test_ranking_and_effects() -> None:
    good = aggregate([run("succeeded", 0.01, solved=100)])
    bad = aggregate([run("diverged", None, nan=3)])
    meh = aggregate([run("succeeded", 0.2)])
    assert sorted([bad, meh, good], key=rank_key) == [good, meh, bad]
    points = [
        {"params": {"train.clip.mode": "none"}, "_runs": [run("diverged", None)] * 5},
        {"params": {"train.clip.mode": "norm"}, "_runs": [run("succeeded", 0.1)] * 5},
    ]
    (effect,) = effects(points, {"train.clip.mode": ["none", "norm"]})
    assert [(lv["value"], lv["diverged"], lv["finished"]) for lv in effect["levels"]] == [
        ("none", 5, 5),
        ("norm", 0, 5),
    ]
    assert "none: diverged 5/5" in effect["summary"] and "norm: diverged 0/5" in effect["summary"]
