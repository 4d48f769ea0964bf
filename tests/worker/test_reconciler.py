"""The reconciler against the real databases and brokers: nothing stays running or queued
forever when a worker dies or the broker forgets."""

from datetime import timedelta

from core.tables import Event, Experiment, utcnow
from tests.conftest import Backend
from tests.factories import SMALL, add_experiment
from worker.reconciler import reconcile


def set_row(sessions, exp_id: str, **values) -> None:
    with sessions() as s:
        row = s.get(Experiment, exp_id)
        for k, v in values.items():
            setattr(row, k, v)
        s.commit()


def test_stale_running_is_requeued_and_sent(sessions, settings, backend: Backend) -> None:
    exp_id = add_experiment(sessions, SMALL)
    old = utcnow() - timedelta(seconds=settings.stale_after_s + 5)
    set_row(sessions, exp_id, status="running", attempt=1, heartbeat_at=old, worker="w1")
    fresh = add_experiment(sessions, SMALL)
    set_row(sessions, fresh, status="running", attempt=1, heartbeat_at=utcnow())
    before = backend.queue_depth()
    assert reconcile(sessions, settings) == {"requeued": 1, "failed": 0, "resent": 0}
    assert backend.queue_depth() == before + 1
    with sessions() as s:
        assert s.get(Experiment, exp_id).status == "queued"
        assert s.get(Experiment, fresh).status == "running"
        ev = s.query(Event).filter_by(experiment_id=exp_id).one()
        assert ev.kind == "worker_lost" and ev.detail["worker"] == "w1"


def test_attempts_exhausted_is_failed_with_a_reason(sessions, settings) -> None:
    exp_id = add_experiment(sessions, SMALL)
    old = utcnow() - timedelta(seconds=settings.stale_after_s + 5)
    set_row(sessions, exp_id, status="running", attempt=settings.max_attempts, heartbeat_at=old)
    assert reconcile(sessions, settings)["failed"] == 1
    with sessions() as s:
        row = s.get(Experiment, exp_id)
    assert row.status == "failed" and row.error["type"] == "worker_lost"
    assert row.finished_at is not None


def test_forgotten_queued_is_sent_again(sessions, settings, backend: Backend) -> None:
    exp_id = add_experiment(sessions, SMALL)
    set_row(
        sessions, exp_id, enqueued_at=utcnow() - timedelta(seconds=settings.requeue_after_s + 5)
    )
    recent = add_experiment(sessions, SMALL)
    before = backend.queue_depth()
    assert reconcile(sessions, settings)["resent"] == 1
    assert backend.queue_depth() == before + 1
    assert reconcile(sessions, settings)["resent"] == 0  # not again until requeue_after_s
    assert recent
