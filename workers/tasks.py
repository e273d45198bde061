"""Celery tasks: thin wrappers that run a stage for one job and enqueue the next one."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery, Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from common import lifecycle
from common.config import Settings
from common.db import db
from common.lifecycle import Stage
from common.models import Job
from common.pipeline.embed import ClipEmbedder, ModelLoadError
from common.pipeline.progress import Cancelled
from workers import broker, jobstate, stages
from workers.celery_app import ROUTES
from workers.jobstate import JobError

log = logging.getLogger(__name__)
T = TypeVar("T")
_embedders: dict[tuple[str, str], ClipEmbedder] = {}  # each keeps the text encoders it has loaded


def embedder_for(job_id: str) -> ClipEmbedder:
    """The CLIP model, loaded once per worker process and kept for every later job."""
    job = db.session.get(Job, job_id)
    return _embedder(jobstate.job_settings(job) if job else jobstate.base_settings())


def _embedder(settings: Settings) -> ClipEmbedder:
    key = (settings.model, settings.device, settings.dtype)
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
        publish(task, args, task_id)


def publish(task: Task, args: tuple[Any, ...], task_id: str) -> None:
    """Send one task, waiting out a Redis restart for up to `publish_retry_s`. kombu retries a
    refused connection itself, but not every error of a connection dropped mid-publish. A task
    that could not be sent at all is left to the sweep, which re-sends the job's step."""
    deadline, delay = time.monotonic() + jobstate.base_settings().publish_retry_s, 0.5
    while True:
        try:
            task.apply_async(args=args, task_id=task_id)
            return
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                log.error("could not send %s %s: %s; the sweep will send it again", task.name, task_id, exc)
                return
            log.warning("could not send %s (%s: %s); retrying in %.1f s", task.name, type(exc).__name__, exc, delay)
            _drop_broker_connections(task.app)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _drop_broker_connections(app: Celery) -> None:
    """Connections to a broker that went away are useless: close them and start new pools, as
    Celery itself does after a fork."""
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None


def retried(job_id: str, what: str, work: Callable[[], T]) -> T:
    """One unit of work, run again whole while the database restarts (every unit is idempotent)."""
    return lifecycle.with_db_retry(work, f"job {job_id}: {what}", jobstate.base_settings().db_retry_s)


def guarded(job_id: str, stage: str, work: Callable[[], None]) -> None:
    """Run one stage; whatever goes wrong ends as a cancelled or failed job with a reason.

    A database that is away longer than `db_retry_s` leaves the job as it is: the sweep
    re-sends its step once the database is back."""
    try:
        retried(job_id, stage, work)
    except (Cancelled, SoftTimeLimitExceeded) as exc:
        db.session.rollback()
        if jobstate.cancel_requested(job_id):
            jobstate.stop_cancelled(job_id)
        else:
            jobstate.fail(job_id, f"{stage} took longer than the task time limit ({exc})")
    except (JobError, ModelLoadError) as exc:
        jobstate.fail(job_id, str(exc))
    except Exception as exc:  # the job must never stay "running" because of a bug or a bad file
        if lifecycle.is_transient(exc):
            raise
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
    started: list[bool] = []

    def work() -> None:
        # A start is counted once per delivery: a database retry of the download is not a new start.
        if not started:
            started.append(stages.start_fetch_chunk(job_id, chunk))
        if not started[0]:
            if stages.fan_in(job_id):
                send(job_id, embed, [(job_id,)])
            return
        if stages.run_fetch_chunk(job_id, chunk, f"{self.request.hostname} pid {os.getpid()}"):
            send(job_id, embed, [(job_id,)])

    guarded(job_id, f"fetch chunk {chunk}", work)


# The GPU worker's pool process killed mid-step (or past its time limit) puts the step back.
@shared_task(name="workers.tasks.embed", reject_on_worker_lost=True)
def embed(job_id: str) -> None:
    def work() -> None:
        if stages.run_embed(job_id, embedder_for(job_id)):
            send(job_id, select, [(job_id,)])

    guarded(job_id, "embed", work)


@shared_task(name="workers.tasks.select", reject_on_worker_lost=True)
def select(job_id: str) -> None:
    guarded(job_id, "select", lambda: stages.run_select(job_id, embedder_for(job_id)))


@shared_task(name="workers.tasks.find")
def find(job_id: str, query: dict[str, str], top: int, reply_to: str) -> None:
    """A search inside a finished dataset; the answer goes to the Redis list the API waits on."""
    try:
        answer = stages.run_find(job_id, query, top, embedder_for(job_id))
    except Exception as exc:  # the API must hear back, whatever happened
        log.exception("job %s: search failed", job_id)
        answer = {"error": f"the search failed: {type(exc).__name__}: {exc}"}
    broker.reply(jobstate.base_settings().redis_url, reply_to, answer)


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
        stage = Stage(job.stage or Stage.SEARCH)  # a queued job whose message was lost starts again
        step = RESEND.get(stage)
        if step is not None:
            calls = [(job.id, c) for c in stages.unfetched_chunks(job.id)] if step is fetch_chunk else [(job.id,)]
            jobstate.log_line(job.id, f"no progress for {settings.stall_resend_s:.0f} s at {job.stage or job.status}; "
                                      f"sending it again ({len(calls)} tasks)")
            db.session.commit()
            send(job.id, step, calls)
    return failed


RESEND: dict[Stage, Task] = {Stage.SEARCH: search, Stage.FETCH: fetch_chunk, Stage.EMBED: embed,
                             Stage.SELECT: select}
