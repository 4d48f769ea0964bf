"""One transaction in one network round trip on PostgreSQL: BEGIN, the statements, COMMIT sent
together in psycopg's pipeline mode, their answers read after one wait. For a short write
whose statements do not depend on each other's answers; each still runs alone and in order,
and under READ COMMITTED each reads a snapshot taken when it starts, after the one before
it finished (a lock the one before waited for is seen through).

The statements go to the psycopg connection under a SQLAlchemy one that holds no
transaction (SQLAlchemy cannot read results in pipeline mode), compiled and bound as
SQLAlchemy would send them: its dialect's SQL, casts and bind processors (JSON wrapped as
psycopg's Json)."""

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import Compiled

Step = tuple[ClauseElement, dict[str, Any]]


@lru_cache(maxsize=64)
def _compiled(
    statement: ClauseElement, dialect: Dialect
) -> tuple[Compiled, dict[str, Callable[[Any], Any] | None]]:
    """The statement's SQL for this dialect and each bind's processor, once per engine."""
    compiled = statement.compile(dialect=dialect)
    if "POSTCOMPILE" in compiled.string:  # an expanding IN: its SQL depends on the values
        raise ValueError("a statement sent in a pipeline cannot have an expanding IN")
    processors = {
        name: bind.type.dialect_impl(dialect).bind_processor(dialect)
        for bind, name in compiled.bind_names.items()
    }
    return compiled, processors


def bound(statement: ClauseElement, dialect: Dialect, params: dict[str, Any]) -> tuple[str, dict]:
    """The SQL and the parameters psycopg is given for `statement` with `params`."""
    compiled, processors = _compiled(statement, dialect)
    values = compiled.construct_params(params)  # a missing value raises here, as in execute
    for name, process in processors.items():
        if process is not None and name in values:
            values[name] = process(values[name])
    return compiled.string, values


def in_one_round_trip(conn: Connection, steps: Sequence[Step]) -> list[list[tuple]]:
    """Each statement's rows, run in one transaction committed in the same round trip.
    `conn` (PostgreSQL through psycopg) must hold no transaction. An error rolls everything
    back and is raised as Connection.execute raises it (sqlalchemy.exc.IntegrityError for a
    unique violation); the connection is left idle, or dropped from the pool when broken."""
    if conn.in_transaction():
        raise RuntimeError("in_one_round_trip commits: it needs a connection with no transaction")
    sent = [bound(statement, conn.dialect, params) for statement, params in steps]
    driver = conn.connection.driver_connection
    # BEGIN and COMMIT are sent as statements: psycopg's implicit BEGIN waits for its answer.
    driver.autocommit = True
    try:
        with driver.pipeline():
            driver.execute("BEGIN", prepare=False)
            cursors = [driver.execute(sql, values) for sql, values in sent]
            driver.execute("COMMIT", prepare=False)
        rows = [cursor.fetchall() if cursor.description else [] for cursor in cursors]
    except BaseException as exc:
        _clean_up(conn, driver)
        if isinstance(exc, psycopg.Error):
            sql = "; ".join(sql for sql, _ in sent)
            raise DBAPIError.instance(sql, None, exc, psycopg.Error, dialect=conn.dialect) from exc
        raise
    driver.autocommit = False
    return rows


def _clean_up(conn: Connection, driver: psycopg.Connection) -> None:
    """After a failed pipeline: its transaction rolled back (an error leaves it aborted, the
    COMMIT skipped) and the connection as SQLAlchemy expects it; one that cannot be brought
    back is invalidated, and the pool opens another."""
    try:
        driver.rollback()
        driver.autocommit = False
    except Exception:
        conn.invalidate()
