"""The FastAPI app: `uvicorn api.main:app`."""

from fastapi import FastAPI

from api import problems
from api.routes import experiments, health, sweeps


def create_app() -> FastAPI:
    app = FastAPI(
        title="gradlab",
        version="0.1.0",
        description="Train recurrent networks and measure whether their gradients vanish, "
        "explode or flow through time.",
    )
    problems.install(app)
    app.include_router(health.router)
    app.include_router(experiments.router)
    app.include_router(sweeps.router)
    return app


app = create_app()
