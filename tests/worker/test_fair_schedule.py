"""Fair scheduling across owners through the real worker path (worker.runner.run_experiment),
on both backends: one owner's backlog does not starve another's first experiment, and no
owner runs more than MAX_RUNNING_PER_OWNER at once (README, "Security and reliability")."""

from sqlalchemy import select

from core.tables import Experiment, utcnow
from tests.factories import add_experiment
from worker.runner import run_experiment

TINY = {
    "task": {"seq_len": 4},
    "model": {"hidden_size": 4},
    "train": {"steps": 2, "batch_size": 2},
    "instrument": {"every": 1, "on": []},
}


def started_order(sessions) -> list[str]:
    with sessions() as s:
        rows = s.execute(
            select(Experiment.owner, Experiment.id)
            .where(Experiment.started_at.is_not(None))
            .order_by(Experiment.started_at)
        ).all()
    return [owner for owner, _ in rows]


def test_a_backlog_does_not_starve_another_owners_first_experiment(
    sessions, settings, one_torch_thread
) -> None:
    backlog = [add_experiment(sessions, TINY, owner="alice") for _ in range(5)]
    bob = add_experiment(sessions, TINY, owner="bob")
    # one worker, the broker's order: alice's five messages, then bob's
    statuses = [run_experiment(m, settings) for m in [*backlog, bob]]
    assert statuses == ["succeeded"] * 6
    order = started_order(sessions)
    assert order[:2] == ["alice", "bob"] and order.count("alice") == 5


def test_an_owner_at_the_running_cap_waits_and_others_run(
    sessions, settings, monkeypatch, one_torch_thread
) -> None:
    monkeypatch.setattr(settings, "max_running_per_owner", 1)
    busy = add_experiment(sessions, TINY, owner="alice")
    with sessions() as s:  # alice already has one running (on another worker)
        row = s.get(Experiment, busy)
        row.status, row.attempt, row.started_at, row.heartbeat_at = (
            "running",
            1,
            utcnow(),
            utcnow(),
        )
        s.commit()
    waiting = add_experiment(sessions, TINY, owner="alice")
    assert run_experiment(waiting, settings) is None  # nothing claimable: alice is at her cap
    with sessions() as s:
        assert s.get(Experiment, waiting).status == "queued"
    bob = add_experiment(sessions, TINY, owner="bob")
    # alice's message runs bob's experiment: the worker is not left idle behind the cap
    assert run_experiment(waiting, settings) == "succeeded"
    with sessions() as s:
        assert s.get(Experiment, bob).status == "succeeded"
        assert s.get(Experiment, waiting).status == "queued"
