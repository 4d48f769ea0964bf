"""Liveness and readiness."""

from fastapi import APIRouter
from sqlalchemy import text

from api.problems import problem_response
from api.responses import FastJSON
from core.db import get_engine
from core.queue import get_celery

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> FastJSON:
    return FastJSON({"status": "ok"})


@router.get("/readyz", responses={503: {}})
def readyz() -> FastJSON:
    """Ready when both the database and the broker answer."""
    checks: dict[str, str] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        with get_celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"down: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return FastJSON({"status": "ready", "checks": checks})
    return problem_response(503, "Not ready", "a dependency is down", "not-ready", checks=checks)
