"""The Celery client side: configuration shared with the worker, and the bell the API rings.
No task code is imported here, so the API never pulls in torch."""

import base64
import uuid
from collections.abc import Callable
from functools import lru_cache

import orjson
import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.settings import Settings, get_settings

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
    if settings.broker_url.startswith("redis"):  # redis://, rediss://, redis+socket://
        # Redis redelivers an unacked task after this long; the reconciler acts sooner.
        app.conf.broker_transport_options = {"visibility_timeout": 6 * 3600}
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


class RedisBell:
    """Sends run_experiment the way kombu's Redis transport would, in one LPUSH.

    Celery's send_task spent about 0.4 ms of CPU a message here (kombu builds a Redis client
    and runs its retry wrappers per publish), the largest part of a POST. The message itself is
    Celery's own (protocol 2, from `app.amqp.as_task_v2`); only the transport's envelope is
    written here, and tests/api/test_queue.py holds it equal to the one send_task writes, so a
    kombu upgrade that changes it fails there, not in production."""

    def __init__(self, app: Celery, url: str, queue: str) -> None:
        self.app, self.queue = app, queue
        # Fail fast: a POST must not wait on a Redis that is down (the row is already stored,
        # and the reconciler sends what was not sent); one reconnect rides out a restart.
        self.redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=0.5,
            socket_timeout=1,  # an LPUSH takes well under a millisecond
            retry=Retry(NoBackoff(), retries=1),
        )

    def __call__(self, experiment_id: str) -> None:
        task_id = str(uuid.uuid4())
        msg = self.app.amqp.as_task_v2(
            task_id, RUN_EXPERIMENT, args=[experiment_id], ignore_result=None
        )  # None: the app setting decides, as send_task leaves it
        envelope = {
            "body": base64.b64encode(orjson.dumps(msg.body)).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": msg.headers,
            "properties": {
                **msg.properties,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": self.queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        self.redis.lpush(self.queue, orjson.dumps(envelope))


@lru_cache
def get_bell() -> Callable[[str], None]:
    settings = get_settings()
    if settings.broker_url.startswith(("redis://", "rediss://")):  # what redis-py connects to
        return RedisBell(get_celery(), settings.broker_url, settings.queue_name)
    return lambda experiment_id: get_celery().send_task(RUN_EXPERIMENT, args=[experiment_id])


def enqueue(experiment_id: str) -> None:
    """Send the experiment id only: the worker re-reads everything else from the database."""
    get_bell()(experiment_id)
