"""Celery tasks: thin wrappers that run a stage for one job and enqueue the next one."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from common.config import Settings
from common.db import db
from common.models import Job
from common.pipeline.embed import ClipEmbedder, ModelLoadError
from common.pipeline.progress import Cancelled
from workers import broker, jobstate, stages
from workers.celery_app import ROUTES
from workers.jobstate import JobError

log = logging.getLogger(__name__)
_embedders: dict[tuple[str, str, str | None], ClipEmbedder] = {}


def embedder_for(job_id: str) -> ClipEmbedder:
    """The CLIP model, loaded once per worker process and kept for every later job."""
    job = db.session.get(Job, job_id)
    return _embedder(jobstate.job_settings(job) if job else jobstate.base_settings())


def _embedder(settings: Settings) -> ClipEmbedder:
    key = (settings.model, settings.device, settings.text_model)
    if key not in _embedders:
        _embedders[key] = ClipEmbedder(*key)
    return _embedders[key]


def preload_model() -> None:
    """Load the configured model when the GPU worker starts, not during the first job."""
    _embedder(jobstate.base_settings())


def queue_of(task: Task) -> str:
    return ROUTES.get(task.name, ROUTES["workers.tasks.*"])["queue"]


def send(job_id: str, task: Task, calls: list[tuple[Any, ...]]) -> None:
    """Record the task ids on the job first (cancel revokes them), then enqueue."""
    job = jobstate.locked(job_id)
    if job is None:
        db.session.rollback()
        return
    ids = [job.record_task(queue_of(task)) for _ in calls]
    db.session.commit()
    for task_id, args in zip(ids, calls):
        task.apply_async(args=args, task_id=task_id)


def guarded(job_id: str, stage: str, work: Callable[[], None]) -> None:
    """Run one stage; whatever goes wrong ends as a cancelled or failed job with a reason."""
    try:
        work()
    except (Cancelled, SoftTimeLimitExceeded) as exc:
        db.session.rollback()
        if jobstate.cancel_requested(job_id):
            jobstate.stop_cancelled(job_id)
        else:
            jobstate.fail(job_id, f"{stage} took longer than the task time limit ({exc})")
    except (JobError, ModelLoadError) as exc:
        jobstate.fail(job_id, str(exc))
    except Exception as exc:  # the job must never stay "running" because of a bug or a bad file
        log.exception("job %s: %s failed", job_id, stage)
        db.session.rollback()
        if jobstate.cancel_requested(job_id):
            jobstate.stop_cancelled(job_id)
        else:
            jobstate.fail(job_id, f"{stage} failed: {type(exc).__name__}: {exc}")


@shared_task(name="workers.tasks.search")
def search(job_id: str) -> None:
    def work() -> None:
        chunks = stages.run_search(job_id)
        if chunks:
            send(job_id, fetch_chunk, [(job_id, c) for c in chunks])

    guarded(job_id, "search", work)


# A worker process killed mid-chunk puts the chunk back on the queue at once; the job
# counts attempts, so a chunk that kills every worker is given up instead of looping.
@shared_task(name="workers.tasks.fetch_chunk", reject_on_worker_lost=True, bind=True)
def fetch_chunk(self: Task, job_id: str, chunk: int) -> None:
    def work() -> None:
        if stages.run_fetch_chunk(job_id, chunk, f"{self.request.hostname} pid {os.getpid()}"):
            send(job_id, embed, [(job_id,)])

    guarded(job_id, f"fetch chunk {chunk}", work)


@shared_task(name="workers.tasks.embed")
def embed(job_id: str) -> None:
    def work() -> None:
        if stages.run_embed(job_id, embedder_for(job_id)):
            send(job_id, select, [(job_id,)])

    guarded(job_id, "embed", work)


@shared_task(name="workers.tasks.select")
def select(job_id: str) -> None:
    guarded(job_id, "select", lambda: stages.run_select(job_id, embedder_for(job_id)))


@shared_task(name="workers.tasks.finish_cancel")
def finish_cancel(job_id: str) -> None:
    """Backstop for a cancel whose tasks were all revoked before any of them ran."""
    job = db.session.get(Job, job_id)
    if job is not None and job.status == "cancelling":
        jobstate.stop_cancelled(job_id)


@shared_task(name="workers.tasks.sweep")
def sweep() -> list[str]:
    """Re-send the lost step of stalled jobs (every task is idempotent); fail hopeless ones."""
    settings = jobstate.base_settings()
    waiting = broker.waiting_task_ids(settings.redis_url)
    failed = jobstate.sweep(settings.stall_timeout_s, waiting_ids=waiting)
    for job in jobstate.stalled(settings.stall_resend_s, waiting):
        step = RESEND.get(job.stage or "")
        if step is not None:
            calls = [(job.id, c) for c in stages.unfetched_chunks(job.id)] if step is fetch_chunk else [(job.id,)]
            jobstate.log_line(job.id, f"no progress for {settings.stall_resend_s:.0f} s at {job.stage}; "
                                      f"sending it again ({len(calls)} tasks)")
            db.session.commit()
            send(job.id, step, calls)
    return failed


RESEND: dict[str, Task] = {"search": search, "fetch": fetch_chunk, "embed": embed, "select": select}
