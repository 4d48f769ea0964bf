"""The memory budget (README, "Security and reliability"): the estimate against measured peaks,
the 422 over MAX_WORKER_MEMORY, and a run that still runs out of memory ends `failed` saying so
without burning its attempts."""

from datetime import timedelta

import pytest

from bench.worker_memory import measure, shape
from core.lifecycle import OOM_SUSPECT_FRACTION
from core.spec import ExperimentCreate, estimated_memory
from core.tables import Event, Experiment, utcnow
from tests.checks import assert_problem
from tests.factories import SMALL, add_experiment
from worker.reconciler import reconcile

# Big enough that the run's own memory dwarfs the allocator's noise (60-500 MB each), small
# enough to take seconds: training-bound, validation-bound, a gated cell and a python loop.
SHAPES = [
    shape("rnn", 300, 64, 2, 512),
    shape("lstm", 400, 64, 2, 8),
    shape("gru", 200, 64, 1, 384),
    shape("rnn", 100, 64, 2, 256, norm="layer"),
]


@pytest.mark.parametrize(
    "spec", SHAPES, ids=lambda s: f"{s['model']['cell']}-B{s['train']['batch_size']}"
)
def test_estimate_bounds_the_measured_peak_within_3x(spec) -> None:
    got = measure(spec)
    assert got["measured"] > 50 * 2**20, got  # the shape is big enough to measure
    assert got["measured"] <= got["estimate"] <= 3 * got["measured"], got


def test_estimate_grows_with_every_factor() -> None:
    base = ExperimentCreate.model_validate(shape("lstm", 100, 64, 1, 512))
    m0 = estimated_memory(base)
    for section, field, value in [
        ("train", "batch_size", 1024),
        ("model", "hidden_size", 128),
        ("model", "num_layers", 2),
        ("train", "dtype", "float64"),
    ]:
        spec = base.model_copy(deep=True)
        setattr(getattr(spec, section), field, value)
        assert estimated_memory(spec) > 1.4 * m0, field
    longer = ExperimentCreate.model_validate(shape("lstm", 200, 64, 1, 512))
    assert estimated_memory(longer) > 1.4 * m0


def test_issue_spec_is_refused_with_the_estimate(client, settings, monkeypatch) -> None:
    """The spec of the report (4.2e13 < MAX_COST, OOM-killed at 5.7 GB): a 422 stating the
    estimate, before anything is stored."""
    monkeypatch.setattr(settings, "max_worker_memory", 4 * 2**30)
    spec = {
        "task": {"seq_len": 5000},
        "model": {"hidden_size": 128, "num_layers": 4},
        "train": {"batch_size": 256, "steps": 500},
    }
    body = assert_problem(client.post("/v1/experiments", json=spec), 422, "train.batch_size")
    assert body["type"].endswith("memory-budget")
    assert body["estimate"] > body["limit"] == 4 * 2**30
    assert "GiB" in body["detail"] and "MAX_WORKER_MEMORY" in body["detail"]
    assert client.get("/v1/experiments").json()["items"] == []
    # a sweep point over it: the same 422, naming the point; nothing stored
    base = {"task": {"seq_len": 500}, "model": {"hidden_size": 256}, "train": {"steps": 5}}
    sweep = {"base": base, "grid": {"train.batch_size": [8, 1024]}}
    monkeypatch.setattr(settings, "max_worker_memory", 2**30)
    body = assert_problem(client.post("/v1/sweeps", json=sweep), 422, "train.batch_size")
    assert body["point"] == {"train.batch_size": 1024}
    assert client.get("/v1/experiments").json()["items"] == []


def test_memory_error_in_a_run_is_failed_once_saying_memory(sessions, monkeypatch) -> None:
    from worker import runner

    def no_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 5800000000 bytes"
        )

    monkeypatch.setattr(runner, "train", no_memory)
    exp_id = add_experiment(sessions, SMALL)
    assert runner.run_experiment(exp_id) == "failed"
    with sessions() as s:
        row = s.get(Experiment, exp_id)
    assert row.status == "failed" and row.attempt == 1
    assert row.error["type"] == "out_of_memory" and "GiB" in row.error["message"]


def lose(sessions, settings, exp_id: str, attempt: int, step: int) -> None:
    """The row as a worker killed at `step` of `attempt` leaves it."""
    old = utcnow() - timedelta(seconds=settings.stale_after_s + 5)
    with sessions() as s:
        row = s.get(Experiment, exp_id)
        row.status, row.attempt, row.heartbeat_at, row.progress_step = (
            "running",
            attempt,
            old,
            step,
        )
        s.commit()


def test_lost_twice_at_one_step_near_the_limit_is_failed_for_memory(sessions, settings) -> None:
    big = shape("lstm", 300, 64, 2, 64)
    exp_id = add_experiment(sessions, big)
    settings.max_worker_memory = int(
        estimated_memory(ExperimentCreate.model_validate(big)) / OOM_SUSPECT_FRACTION / 2
    )
    # a small spec lost the same way is a worker problem, not a memory one: retried
    small_id = add_experiment(sessions, SMALL)
    for i in (exp_id, small_id):
        lose(sessions, settings, i, 1, 0)
    assert reconcile(sessions, settings, send=lambda _: None)["requeued"] == 2
    for i in (exp_id, small_id):
        lose(sessions, settings, i, 2, 0)
    counts = reconcile(sessions, settings, send=lambda _: None)
    assert counts == {"requeued": 1, "failed": 1, "resent": 0}
    with sessions() as s:
        row, small = s.get(Experiment, exp_id), s.get(Experiment, small_id)
        lost = s.query(Event).filter_by(experiment_id=exp_id, kind="worker_lost").count()
    assert row.status == "failed" and row.attempt == 2 < settings.max_attempts and lost == 2
    assert row.error["type"] == "out_of_memory" and "memory" in row.error["message"]
    assert small.status == "queued"
