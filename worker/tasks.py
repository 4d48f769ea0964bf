"""Celery tasks. Thin: everything they do is in worker.runner, testable without Celery."""

from core.queue import RUN_EXPERIMENT
from worker.celery_app import app
from worker.runner import run_experiment as _run_experiment


@app.task(name=RUN_EXPERIMENT)
def run_experiment(experiment_id: str) -> None:
    _run_experiment(experiment_id)
