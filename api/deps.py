"""The dependencies routes declare, each defined once: the session, the owner, thinning."""

import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Query
from sqlalchemy.orm import Session

from api.auth import Owner, current_owner
from core.db import get_sessionmaker
from core.errors import Problem
from core.settings import get_settings
from core.traces import Window


async def get_session() -> AsyncIterator[Session]:
    """FastAPI dependency: one session per request. An async generator on purpose: making a
    Session does no I/O (it connects on first use, inside the route's thread), and FastAPI
    would otherwise run a sync generator's enter and exit on the threadpool: two hops a request."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass
class Thinning:
    """Query parameters that thin a long trace: a step range, then every k-th point, then at
    most `max_points` evenly spaced (and never more than MAX_TRACE_POINTS)."""

    from_step: int | None = Query(None, ge=0)
    to_step: int | None = Query(None, ge=0)
    every: int = Query(1, ge=1, le=1_000_000)
    max_points: int | None = Query(None, ge=1, le=1_000_000)

    def window(self) -> Window:
        """The points to keep, capped at MAX_TRACE_POINTS a series whatever `max_points` asks."""
        cap = get_settings().max_trace_points
        most = min(self.max_points or cap, cap)
        return Window(self.from_step, self.to_step, self.every, most)


@lru_cache
def render_slots(most: int) -> threading.BoundedSemaphore:
    """The slots for drawing plots and reports in this process (one semaphore per size)."""
    return threading.BoundedSemaphore(most)


def render_slot() -> Iterator[None]:
    """A slot to draw in, for a plot or report route: at most MAX_CONCURRENT_RENDERS draw at
    once, so figures never hold every thread and database connection of the API; a request
    that waits RENDER_WAIT_S without one is a 503 with Retry-After. A sync generator: FastAPI
    waits for the slot in the threadpool, not on the event loop."""
    s = get_settings()
    slots = render_slots(s.max_concurrent_renders)
    if not slots.acquire(timeout=s.render_wait_s):
        raise Problem(
            503,
            "Busy drawing",
            f"{s.max_concurrent_renders} plots or reports are being drawn; try again shortly",
            "render-busy",
            headers={"Retry-After": "2"},
        )
    try:
        yield
    finally:
        slots.release()


RenderSlot = Depends(render_slot)


__all__ = ["Owner", "RenderSlot", "SessionDep", "Thinning", "current_owner", "get_session"]
