"""The Celery client side: configuration shared with the worker, and the bell the API rings.
No task code is imported here, so the API never pulls in torch."""

from functools import lru_cache

from celery import Celery

from api.settings import Settings, get_settings

RUN_EXPERIMENT = "gradlab.run_experiment"


def make_celery(settings: Settings) -> Celery:
    app = Celery("gradlab", broker=settings.broker_url)
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_ignore_result=True,  # results live in the database, not in a result backend
        task_acks_late=True,  # a worker that dies mid-run leaves the message unacked
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one experiment per worker at a time
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
    )
    if settings.broker_url.startswith(("redis", "rediss")):
        # Redis redelivers an unacked task after this long; the reconciler acts sooner.
        app.conf.broker_transport_options = {"visibility_timeout": 6 * 3600}
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def enqueue(experiment_id: str) -> None:
    """Send the experiment id only: the worker re-reads everything else from the database."""
    get_celery().send_task(RUN_EXPERIMENT, args=[experiment_id])
