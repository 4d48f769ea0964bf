"""The worker's Celery app: run with `celery -A worker.celery_app worker --pool solo`.
Nothing here touches CUDA at import time; the device is chosen when a run starts."""

from celery import signals

from api.queue import get_celery
from api.settings import get_settings

app = get_celery()
app.conf.include = ["worker.tasks"]


@signals.worker_ready.connect
def _start_reconciler(**_kwargs: object) -> None:
    from worker.reconciler import start_reconciler_thread

    start_reconciler_thread(get_settings())
