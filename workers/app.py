"""The `celery -A workers.app` target: the Flask app (for the database) and its Celery app."""

from __future__ import annotations

from celery.signals import worker_process_init, worker_ready

from api import create_app
from common.db import db

flask_app = create_app()
app = flask_app.extensions["celery"]
from workers.tasks import preload_model  # noqa: E402  (importing registers the tasks)


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    """A forked child must not reuse the parent's pooled Postgres connections."""
    with flask_app.app_context():
        db.engine.dispose(close=False)


@worker_ready.connect
def _load_model(sender: object = None, **_: object) -> None:
    """The GPU worker loads CLIP at start, not in the first job."""
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    if "gpu" in queues:
        with flask_app.app_context():
            preload_model()
