"""The FastAPI app: `uvicorn api.main:app`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import guard, observability, problems
from api.query import QueryCheckMiddleware
from api.render.ui import STATIC_DIR
from api.routes import (
    datasets,
    docs,
    dynamics,
    experiments,
    export,
    health,
    ingest,
    manage,
    plots,
    reports,
    stream,
    sweeps,
    traces,
    ui,
)
from core import logs
from core.fast_read import FastReader
from core.settings import get_settings
from core.spec import ExperimentCreate, SweepCreate


def add_spec_and_security(app: FastAPI) -> None:
    """The OpenAPI document gets the spec's schema (declared by hand on POST /v1/experiments)
    and the bearer scheme every /v1 operation requires."""
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = base_openapi()
        components = doc.setdefault("components", {})
        for model in (ExperimentCreate, SweepCreate):  # bodies read by api.guard.read_json
            spec = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.setdefault("schemas", {}).update(spec.pop("$defs", {}))
            components["schemas"][model.__name__] = spec
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        components["schemas"]["Problem"] = problems.PROBLEM_SCHEMA
        components["schemas"].pop("HTTPValidationError", None)
        components["schemas"].pop("ValidationError", None)
        problem = {
            "content": {problems.PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        }
        for path, ops in doc["paths"].items():
            for op in ops.values():
                codes = ["400", "404", "409", "413", "422", "431", "503"]
                if not path.startswith("/v1"):
                    codes = ["400", "413", "431"]
                if path.startswith("/v1"):
                    op["security"] = [{"bearer": []}]
                    codes += ["401", "429"]
                if path == "/readyz":
                    codes.append("503")
                for code in codes:  # every error is a problem document (RFC 9457)
                    op.setdefault("responses", {})[code] = {"description": "problem", **problem}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The experiment poll's async reader lives on the server's event loop (PostgreSQL)."""
    settings = get_settings()
    app.state.fast_reader = FastReader.for_url(settings.database_url, settings.db_async_pool_size)
    try:
        yield
    finally:
        if app.state.fast_reader is not None:
            await app.state.fast_reader.close()


def create_app() -> FastAPI:
    app = FastAPI(
        lifespan=lifespan,
        title="gradlab",
        version="0.1.0",
        description="Train recurrent networks and measure whether their gradients vanish, "
        "explode or flow through time.",
        docs_url=None,  # served from local assets by api/routes/docs.py
        redoc_url=None,
    )
    problems.install(app)
    logs.configure_logging()
    app.add_middleware(QueryCheckMiddleware)
    app.add_middleware(guard.RequestGuard)  # before the routes and the query check
    app.add_middleware(observability.ObservabilityMiddleware)  # outermost: sees the 4xx too
    app.include_router(observability.router)
    app.include_router(health.router)
    app.include_router(ingest.router)  # before experiments: POST /v1/experiments/external
    app.include_router(experiments.router)
    app.include_router(manage.router)
    app.include_router(traces.router)
    app.include_router(dynamics.router)
    app.include_router(sweeps.router)
    app.include_router(plots.router)
    app.include_router(reports.router)
    app.include_router(export.router)
    app.include_router(stream.router)
    app.include_router(datasets.router)
    app.include_router(ui.router)
    app.include_router(docs.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    add_spec_and_security(app)
    return app


app = create_app()
