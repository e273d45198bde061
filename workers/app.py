"""The `celery -A workers.app` target: the Flask app (for the database) and its Celery app."""

from __future__ import annotations

from celery.signals import celeryd_after_setup, worker_process_init

from api import create_app
from common.db import db

flask_app = create_app()
app = flask_app.extensions["celery"]
from workers.tasks import preload_model  # noqa: E402  (importing registers the tasks)

_serves_gpu_queue = False


@celeryd_after_setup.connect
def _note_queues(sender: object = None, instance: object = None, **_: object) -> None:
    """Remember, before the pool forks, whether this worker consumes the gpu queue."""
    global _serves_gpu_queue
    queues = getattr(getattr(getattr(instance, "app", None), "amqp", None), "queues", None)
    _serves_gpu_queue = queues is not None and "gpu" in queues.consume_from


@worker_process_init.connect
def _start_pool_process(**_: object) -> None:
    """A forked child gets its own Postgres connections; a GPU pool process loads CLIP now, once,
    and is the first to touch CUDA (which does not survive a fork)."""
    with flask_app.app_context():
        db.engine.dispose(close=False)
        if _serves_gpu_queue:
            preload_model()
