"""The worker's Celery app: run with `celery -A worker.celery_app worker --pool solo`.
Nothing here touches CUDA at import time; the device is chosen when a run starts."""

from celery import signals

from core.logs import configure_logging
from core.queue import get_celery
from core.settings import get_settings

configure_logging()  # the gradlab loggers as JSON lines, with the request id of each run
app = get_celery()
app.conf.include = ["worker.tasks"]


@signals.worker_ready.connect
def _start_reconciler(**_kwargs: object) -> None:
    from worker.reconciler import start_reconciler_thread

    start_reconciler_thread(get_settings())


@signals.worker_ready.connect
def _start_webhooks(**_kwargs: object) -> None:
    from worker.webhooks import start_dispatcher_thread

    start_dispatcher_thread()
