"""The experiment poll, `GET /v1/experiments/{id}`, read on the event loop itself on
PostgreSQL: psycopg's async connections, in a small pool opened and closed with the app's
lifespan (so bound to its event loop). The threadpool hop the other reads take costs this
route about 40 % of its throughput (bench/load.py); a blocking read on the loop instead would
stall every request behind a slow database. An async read does neither.

Bounded like the synchronous pool: at most `db_async_pool_size` connections, a request that
cannot get one within POOL_TIMEOUT_S, or whose connection fails, is told so (`None` back: the
caller takes the threadpool route, whose errors the API already answers)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.engine import make_url

from core.db import POOL_TIMEOUT_S
from core.tables import Experiment

_BY_ID = f"SELECT * FROM {Experiment.__tablename__} WHERE id = %s"
UNAVAILABLE = object()  # the fast route could not answer: take the other


class FastReader:
    def __init__(self, database_url: str, size: int) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._free: asyncio.LifoQueue[psycopg.AsyncConnection] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(size)
        self._open: set[psycopg.AsyncConnection] = set()
        self.loop = asyncio.get_running_loop()

    @classmethod
    def for_url(cls, database_url: str, size: int) -> FastReader | None:
        """A reader for PostgreSQL; None for SQLite (its reads are local and short)."""
        return cls(database_url, size) if database_url.startswith("postgresql") else None

    async def experiment(self, experiment_id: str) -> Any:
        """The experiments row (attribute access, as a Core row), None when there is none,
        UNAVAILABLE when this route cannot answer now."""
        try:
            await asyncio.wait_for(self._slots.acquire(), POOL_TIMEOUT_S)
        except TimeoutError:
            return UNAVAILABLE
        conn = None
        try:
            conn = self._free.get_nowait() if not self._free.empty() else await self._connect()
            async with conn.cursor(row_factory=namedtuple_row) as cur:
                await cur.execute(_BY_ID, (experiment_id,), prepare=True)
                row = await cur.fetchone()
            self._free.put_nowait(conn)
            return row
        except (psycopg.Error, OSError, TimeoutError):
            if conn is not None:
                self._open.discard(conn)
                await conn.close()
            return UNAVAILABLE
        finally:
            self._slots.release()

    async def _connect(self) -> psycopg.AsyncConnection:
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=int(POOL_TIMEOUT_S)
        )
        self._open.add(conn)
        return conn

    async def close(self) -> None:
        for conn in list(self._open):
            await conn.close()
        self._open.clear()
