"""core.lifecycle.submit_queued on PostgreSQL: each try at the insert is one pipeline (BEGIN,
a slot, the insert under the cap, COMMIT in one round trip), and the cap stays exact under
concurrency; near the cap a second trip takes every slot and counts alone; a unique violation
and a broken connection come out as SQLAlchemy's errors, the connection clean behind them."""

import threading

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from core import lifecycle
from core.db import get_engine
from core.lifecycle import SLOTS, queued_values, submit_queued
from core.spec import ExperimentCreate
from core.tables import Experiment
from tests.checks import at_once, pg_round_trips

SPEC = ExperimentCreate.model_validate({}).model_dump(mode="json")
T = Experiment.__table__


@pytest.fixture
def pg(settings):
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("the pipeline is PostgreSQL's")
    return settings


def values(owner: str = "cap", **kw) -> dict:
    return queued_values(owner, SPEC, name="n", tags=["a", "b"], request_id=None, **kw)


def submit(owner: str, cap: int, **kw) -> bool:
    with get_engine().connect() as conn:
        return submit_queued(conn, values(owner, **kw), cap)


def stored(owner: str = "cap") -> int:
    with get_engine().connect() as conn:
        return conn.scalar(select(func.count()).select_from(T).where(T.c.owner == owner))


def advisory_locks_held(conn) -> int:
    return conn.scalar(
        text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
    )


def hold_slots(conn, owner: str, slots: range) -> None:
    for s in slots:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:o), :s)"), {"o": owner, "s": s})


def test_far_from_the_cap_a_submission_is_one_round_trip_and_stored_whole(pg) -> None:
    submit("cap", 500)  # the pool's connection opened outside the count
    with pg_round_trips(get_engine()) as trips:
        assert submit("cap", 500, idempotency_key="k1", request_hash="h")
    assert trips.n == 1, trips.log
    assert trips.log.index("BEGIN") < trips.log.index("INSERT") < trips.log.index("COMMIT")
    assert trips.log.count("\tSync") == 1 and "ROLLBACK" not in trips.log
    with get_engine().connect() as conn:
        row = conn.execute(select(T).where(T.c.idempotency_key == "k1")).one()
    assert row.spec == SPEC and row.tags == ["a", "b"] and row.name == "n"
    assert row.status == "queued" and row.request_hash == "h" and row.created_at.tzinfo
    assert advisory_locks_held_after_return() == 0


def advisory_locks_held_after_return() -> int:
    """Advisory locks of any backend: a committed pipeline leaves none behind."""
    with get_engine().connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))


def widened(monkeypatch) -> None:
    """A slow commit after each pipelined insert: the window a race would need, wider."""
    real = lifecycle.in_one_round_trip

    def slow(conn, steps):
        return real(conn, [*steps, (text("SELECT pg_sleep(0.02)"), {})])[:-1]

    monkeypatch.setattr(lifecycle, "in_one_round_trip", slow)


@pytest.mark.parametrize("cap", [3, SLOTS + 4, 3 * SLOTS])
def test_concurrent_pipelined_submissions_fill_the_cap_exactly(pg, monkeypatch, cap) -> None:
    widened(monkeypatch)
    n = cap + 2 * SLOTS + 3
    answers = at_once(lambda: submit("cap", cap), n, 60)
    assert answers.count(True) == cap and len(answers) == n
    assert stored() == cap


def test_a_slot_is_a_free_one_taken_without_waiting_else_one_waited_for(pg) -> None:
    """The one statement that takes a slot: a try-lock finds the one free slot (a blocking
    lock on a random slot would wait 7 times in 8), and only when none is free does it wait,
    for exactly one."""
    with get_engine().connect() as held, get_engine().connect() as conn:
        hold_slots(held, "cap", range(SLOTS - 1))
        for _ in range(3):
            conn.execute(text("SET LOCAL lock_timeout = '2s'"))  # a wait fails, not hangs
            assert lifecycle._take_a_slot(conn, "cap") == SLOTS - 1
            assert advisory_locks_held(conn) == 1
            conn.rollback()
        hold_slots(held, "cap", range(SLOTS - 1, SLOTS))
        got = []
        waiter = threading.Thread(
            target=lambda: got.append(
                (lifecycle._take_a_slot(conn, "cap"), advisory_locks_held(conn))
            )
        )
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()  # every slot held: it waits
        held.rollback()
        waiter.join(10)
        assert len(got) == 1 and 0 <= got[0][0] < SLOTS and got[0][1] == 1
        conn.rollback()


def test_far_from_the_cap_a_submission_does_not_wait_for_another_in_flight(pg) -> None:
    answers: list[bool] = []
    with get_engine().connect() as held:
        hold_slots(held, "cap", range(SLOTS - 1))  # seven submissions in flight
        three = threading.Thread(target=lambda: answers.extend(submit("cap", 99) for _ in "abc"))
        three.start()
        three.join(2.0)
        waited = three.is_alive()
        held.rollback()
    three.join(10)
    assert not waited and answers == [True] * 3
    assert stored() == 3


def test_near_the_cap_a_second_round_trip_counts_alone(pg) -> None:
    cap = SLOTS + 1  # the first try needs room for SLOTS more rows: two rows leave too little
    with pg_round_trips(get_engine()) as trips:
        assert submit("cap", cap) and submit("cap", cap)
    assert trips.n == 2, trips.log
    finished = threading.Event()
    with get_engine().connect() as held:
        lifecycle._take_a_slot(held, "cap")  # another submission in flight
        worker = threading.Thread(target=lambda: (submit("cap", cap), finished.set()))
        worker.start()
        assert not finished.wait(0.5)  # it waits for every slot, this one's too
        assert stored() == 2  # and its first try wrote nothing
        held.rollback()
    assert finished.wait(10)
    worker.join()
    assert stored() == 3
    with pg_round_trips(get_engine()) as trips:
        assert submit("cap", cap)
    assert trips.n == 2, trips.log  # the first try commits nothing, the second inserts


def test_over_the_cap_nothing_is_written_and_the_connection_is_idle(pg) -> None:
    cap = 2
    assert submit("cap", cap) and submit("cap", cap)
    with get_engine().connect() as conn:
        assert not submit_queued(conn, values(), cap)
        assert not conn.in_transaction()
        assert conn.connection.driver_connection.info.transaction_status.name == "IDLE"
        assert conn.connection.driver_connection.autocommit is False
    assert stored() == cap and submit("other", cap)  # another owner is not capped by this one


def test_a_unique_violation_is_sqlalchemys_and_the_connection_goes_on(pg) -> None:
    """Past psycopg's prepare threshold (the insert a prepared statement by then), a conflict
    on the idempotency key rolls back the pipeline and raises IntegrityError (the route's
    replay); the same connection then submits again."""
    with get_engine().connect() as conn:
        for i in range(7):
            assert submit_queued(conn, values(idempotency_key=f"k{i}"), 500)
        with pytest.raises(IntegrityError, match="ix_experiments_idempotency"):
            submit_queued(conn, values(idempotency_key="k3"), 500)
        driver = conn.connection.driver_connection
        assert driver.info.transaction_status.name == "IDLE" and driver.autocommit is False
        assert not conn.in_transaction()
        for i in range(7, 10):
            assert submit_queued(conn, values(idempotency_key=f"k{i}"), 500)
    assert stored() == 10
    assert advisory_locks_held_after_return() == 0


def test_a_broken_connection_is_an_operational_error_and_left_out_of_the_pool(pg) -> None:
    with get_engine().connect() as conn:
        assert submit_queued(conn, values(), 500)
        pid = conn.connection.driver_connection.info.backend_pid
        with get_engine().connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(DBAPIError) as raised:
            submit_queued(conn, values(), 500)
        assert raised.value.orig is not None
        assert submit_queued(conn, values(), 500)  # a new connection under it
        assert conn.connection.driver_connection.info.backend_pid != pid
    assert stored() == 2


def test_inside_a_transaction_it_inserts_there_and_commits_it(pg) -> None:
    with get_engine().connect() as conn:
        conn.execute(T.update().where(T.c.id.is_(None)).values(note="x"))  # a transaction
        assert submit_queued(conn, values(), 500)
        assert not conn.in_transaction()
    assert stored() == 1
