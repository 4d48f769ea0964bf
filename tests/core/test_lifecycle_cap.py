"""The active cap under concurrent submissions of one owner (core.lifecycle.insert_queued):
exact on both backends, and on PostgreSQL a submission far from the cap does not wait for
another's commit (the slots), while one near the cap counts alone."""

import threading
import time

import pytest
from sqlalchemy import func, select

from core import lifecycle
from core.db import get_engine
from core.lifecycle import SLOTS, insert_queued, lock_owner, queued_values
from core.spec import ExperimentCreate
from core.tables import Experiment
from tests.checks import at_once

SPEC = ExperimentCreate.model_validate({}).model_dump(mode="json")


def values(owner: str = "cap") -> dict:
    return queued_values(owner, SPEC, name=None, tags=[], request_id=None)


def submit(owner: str, cap: int) -> bool:
    with get_engine().connect() as conn:
        ok = insert_queued(conn, values(owner), cap)
        if ok:
            time.sleep(0.005)  # a slow commit widens the window a race would need
            conn.commit()
        return ok


def stored(owner: str) -> int:
    with get_engine().connect() as conn:
        where = Experiment.__table__.c.owner == owner
        return conn.scalar(select(func.count()).select_from(Experiment.__table__).where(where))


@pytest.mark.parametrize("cap", [3, SLOTS + 4, 3 * SLOTS])
def test_concurrent_submissions_fill_the_cap_exactly(settings, cap: int) -> None:
    """More submissions at once than the cap and than the slots: exactly `cap` are stored,
    through the fast path first and the counted one near the cap."""
    n = cap + 2 * SLOTS + 3
    answers = at_once(lambda: submit("cap", cap), n, 60)
    assert answers.count(True) == cap and len(answers) == n
    assert stored("cap") == cap


def test_far_from_the_cap_a_submission_does_not_wait_for_another(settings) -> None:
    if settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer: a submission waits for the write lock")
    cap = 4 * SLOTS
    with get_engine().connect() as held:
        assert insert_queued(held, values(), cap)  # in flight: a slot taken, not committed
        t0 = time.perf_counter()
        assert submit("cap", cap)
        assert time.perf_counter() - t0 < 2.0
        held.commit()
    assert stored("cap") == 2


def test_near_the_cap_a_submission_waits_for_every_one_in_flight(settings) -> None:
    if settings.database_url.startswith("sqlite"):
        pytest.skip("the slots are PostgreSQL's")
    cap = SLOTS + 1  # the fast path needs room for SLOTS more rows: two leave too little
    assert submit("cap", cap) and submit("cap", cap)
    finished = threading.Event()
    with get_engine().connect() as held:
        lifecycle._take_a_slot(held, "cap")  # another submission in flight
        worker = threading.Thread(target=lambda: (submit("cap", cap), finished.set()))
        worker.start()
        assert not finished.wait(0.5)  # it counts alone: it waits for the slot held here
        held.rollback()
    assert finished.wait(10)
    worker.join()
    assert stored("cap") == 3


def test_every_slot_excludes_each_slot(settings) -> None:
    """lock_owner (sweeps, external runs) waits for any single-slot holder of that owner only."""
    if settings.database_url.startswith("sqlite"):
        pytest.skip("the slots are PostgreSQL's")
    done = threading.Event()

    def lock_all(owner: str) -> None:
        with get_engine().connect() as conn:
            lock_owner(conn, owner)
            conn.rollback()
        done.set()

    with get_engine().connect() as held:
        lifecycle._take_a_slot(held, "cap")
        other = threading.Thread(target=lock_all, args=("someone-else",))
        other.start()
        assert done.wait(5)  # another owner's lock does not wait
        done.clear()
        mine = threading.Thread(target=lock_all, args=("cap",))
        mine.start()
        assert not done.wait(0.5)
        held.rollback()
    assert done.wait(10)
    other.join()
    mine.join()
