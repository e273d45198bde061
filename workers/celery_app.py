"""The Celery app: queues, routing and reliability settings, with every task inside a Flask app context."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from flask import Flask

from common.config import Settings

# The GPU queue gets the model work; everything else (search, fetch, bookkeeping) is CPU work.
ROUTES = {
    "workers.tasks.embed": {"queue": "gpu"},
    "workers.tasks.select": {"queue": "gpu"},
    "workers.tasks.find": {"queue": "gpu"},
    "workers.tasks.*": {"queue": "cpu"},
}
# Unacknowledged tasks come back after this long; longer than any task may run.
VISIBILITY_TIMEOUT_S = 4 * 3600


def publish_retry_policy(budget_s: float) -> dict[str, float]:
    """Retry sending a task while Redis is away (a restart) for about `budget_s`."""
    step_s, max_s = 1.0, 5.0
    # Waits 0, 1, 2 ... 5, 5, 5 s: enough tries to cover the budget.
    retries = int(budget_s // max_s) + int(max_s / step_s) + 1
    return {"max_retries": retries, "interval_start": 0, "interval_step": step_s, "interval_max": max_s}


def celery_config(settings: Settings) -> dict[str, Any]:
    gpu_limit = settings.gpu_task_time_limit_s
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # job state lives in Postgres, not in a result backend
        "task_default_queue": "cpu",
        "task_routes": ROUTES,
        # Long tasks: take one at a time and acknowledge after the work, so a crash redelivers it.
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        # A task that loses Redis keeps working (its state is in Postgres) and publishes its next
        # step when Redis is back; a broker that restarted empty has no message to redeliver.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_publish_retry": True,
        "task_publish_retry_policy": publish_retry_policy(settings.publish_retry_s),
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_soft_time_limit": 15 * 60,
        "task_time_limit": 20 * 60,
        # The GPU worker is a pool of one process, so a hung embed can be interrupted, then killed.
        "task_annotations": {name: {"soft_time_limit": gpu_limit, "time_limit": gpu_limit + max(5.0, gpu_limit / 10)}
                             for name in ("workers.tasks.embed", "workers.tasks.select")},
        "worker_max_tasks_per_child": 200,
        # A GPU pool process loads the model before it reports ready; give it time to.
        "worker_proc_alive_timeout": 300,
        "beat_schedule": {"sweep": {"task": "workers.tasks.sweep", "schedule": settings.sweep_every_s}},
        # Natively the schedule file lives beside the datasets, not in whatever folder beat starts in.
        "beat_schedule_filename": str(settings.data_root / ".celerybeat-schedule"),
    }


def make_celery(flask_app: Flask) -> Celery:
    """The Flask docs' pattern: each task runs in an app context, so it can use the database."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with flask_app.app_context():
                return self.run(*args, **kwargs)

    settings: Settings = flask_app.config["CVDB_SETTINGS"]
    app = Celery("cvdb", task_cls=FlaskTask)
    app.config_from_object(celery_config(settings))
    app.set_default()
    flask_app.extensions["celery"] = app
    return app
