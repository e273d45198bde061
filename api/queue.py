"""Sending and revoking a job's Celery tasks from the API, by task name (no worker code imported)."""

from __future__ import annotations

from celery import Celery
from flask import current_app

CANCEL_GRACE_S = 3.0


def celery() -> Celery:
    return current_app.extensions["celery"]


# A request does not wait for Redis to come back: a few quick tries, then the caller answers 503.
QUICK_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def enqueue(task_id: str, name: str, queue: str, *args: object, countdown: float | None = None) -> None:
    celery().send_task(name, args=list(args), task_id=task_id, queue=queue, countdown=countdown,
                       retry=True, retry_policy=QUICK_RETRY)


def revoke(tasks: list[dict[str, str]]) -> None:
    """Revoke these tasks of a job (as recorded in Job.task_ids). Both worker kinds run prefork
    pools, so running tasks are interrupted too: SIGUSR1 raises SoftTimeLimitExceeded inside the
    task, which ends it as cancelled. Tasks also stop at the cancel flag between items."""
    if tasks:
        celery().control.revoke([task["id"] for task in tasks], terminate=True, signal="SIGUSR1")
