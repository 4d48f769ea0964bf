"""The dependencies routes declare, each defined once: the session, the owner, thinning."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query
from sqlalchemy.orm import Session

from api.auth import Owner, current_owner
from core.db import get_sessionmaker


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
    most `max_points` evenly spaced (the range's first and last point kept)."""

    from_step: int | None = Query(None, ge=0)
    to_step: int | None = Query(None, ge=0)
    every: int = Query(1, ge=1, le=1_000_000)
    max_points: int | None = Query(None, ge=1, le=1_000_000)

    def indices(self, steps: list[int]) -> list[int]:
        idx = [
            i
            for i, s in enumerate(steps)
            if (self.from_step is None or s >= self.from_step)
            and (self.to_step is None or s <= self.to_step)
        ][:: self.every]
        if self.max_points is not None and len(idx) > self.max_points:
            # evenly spaced over the range, the first and the last point always kept
            n, most = len(idx), self.max_points
            picks = (
                [0] if most == 1 else sorted({round(k * (n - 1) / (most - 1)) for k in range(most)})
            )
            idx = [idx[p] for p in picks]
        return idx

    def apply(self, steps: list[int], values: list[Any]) -> tuple[list[int], list[Any]]:
        idx = self.indices(steps)
        return [steps[i] for i in idx], [values[i] for i in idx]


__all__ = ["Owner", "SessionDep", "Thinning", "current_owner", "get_session"]
