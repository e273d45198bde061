"""A job's lifecycle in one place: its statuses and stages, and the few transitions that the API,
the workers and the sweep all call (submit, start, advance, request_cancel, fail, cancel, finish,
re-send), with the retry rule for a database that restarts under them.

Every transition locks the job's row and checks where the job is before it moves it, so a task
that runs twice (acks_late redelivery) or late (after a cancel) cannot move a job again.

    queued -> running (search -> fetch -> embed -> select) -> done | failed
    queued | running -> cancelling -> cancelled
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import time
from collections.abc import Callable, Set
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from common.db import db

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    DONE = "done"
    FAILED = "failed"


class Stage(enum.StrEnum):
    SEARCH = "search"
    FETCH = "fetch"
    EMBED = "embed"
    SELECT = "select"
    DONE = "done"


# A job in one of these states will never change again.
FINAL: frozenset[JobStatus] = frozenset({JobStatus.CANCELLED, JobStatus.DONE, JobStatus.FAILED})
ACTIVE: tuple[JobStatus, ...] = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)

# The models take their statuses from here, so they are imported after the enums are defined.
from common import models  # noqa: E402


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- a database that goes away for a while ------------------------------------------------------

def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection, a server starting up or shutting down: worth retrying."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError))


def with_db_retry(work: Callable[[], T], what: str, budget_s: float) -> T:
    """Run one unit of work; when the database is away, roll back and run the whole unit again,
    with backoff, for up to `budget_s`. Units are idempotent, so half a unit is never kept."""
    deadline, delay = time.monotonic() + budget_s, 0.5
    while True:
        try:
            return work()
        except DBAPIError as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, type(exc.orig).__name__, delay)
            forget_session()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def forget_session() -> None:
    """Drop the session and its connection: after a restart they belong to a dead server."""
    try:
        db.session.rollback()
    except DBAPIError:
        pass
    db.session.remove()


# -- reading and logging ------------------------------------------------------------------------

def locked(job_id: str) -> models.Job | None:
    """The job row, locked until the next commit: every status or stage change goes through here."""
    return db.session.get(models.Job, job_id, with_for_update=True, populate_existing=True)


def log_line(job_id: str, message: str) -> None:
    """Append one timestamped line in a single UPDATE, so concurrent tasks never lose lines."""
    line = models.log_entry(message)
    db.session.execute(update(models.Job).where(models.Job.id == job_id)
                       .values(log=models.Job.log + line, heartbeat_at=now()))


def heartbeat(job_id: str) -> None:
    db.session.execute(update(models.Job).where(models.Job.id == job_id).values(heartbeat_at=now()))


def cancel_requested(job_id: str) -> bool:
    query = select(models.Job.cancel_requested).where(models.Job.id == job_id)
    flag = db.session.execute(query).scalar_one_or_none()
    return flag is None or bool(flag)  # a deleted job counts as cancelled


# -- transitions --------------------------------------------------------------------------------

def submit(job: models.Job, message: str) -> str:
    """Store a new queued job with the id of its first task; the caller publishes it afterwards."""
    job.status, job.stage = JobStatus.QUEUED, None
    db.session.add(job)
    task_id = job.record_task("cpu")
    job.append_log(message)
    db.session.commit()  # the row exists before any worker can look for it
    return task_id


def start(job_id: str) -> models.Job | None:
    """queued -> running at search; also takes a redelivered search of a running job back."""
    job = locked(job_id)
    if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        db.session.rollback()
        return None
    if job.stage not in (None, Stage.SEARCH):
        db.session.commit()
        return job
    job.status, job.stage, job.started_at, job.heartbeat_at = JobStatus.RUNNING, Stage.SEARCH, now(), now()
    db.session.commit()
    return job


def advance(job_id: str, frm: Stage, to: Stage, message: str, **fields: Any) -> bool:
    """Move a running job from one stage to the next exactly once; True if this call moved it."""
    job = locked(job_id)
    moved = job is not None and job.status == JobStatus.RUNNING and job.stage == frm
    if job is not None and moved:
        job.stage = to
        for name, value in fields.items():
            setattr(job, name, value)
    db.session.commit()
    if moved:
        log_line(job_id, message)
        db.session.commit()
    return moved


def request_cancel(job_id: str) -> tuple[models.Job, list[dict[str, str]], str] | None:
    """Set the cancel flag; returns the job, the tasks to revoke and the id of the finishing task,
    or None when the job is already final."""
    job = locked(job_id)
    if job is None or job.status in FINAL:
        db.session.rollback()
        return None
    job.cancel_requested, job.status = True, JobStatus.CANCELLING
    job.append_log("cancel requested")
    sent = list(job.task_ids or [])
    finisher = job.record_task("cpu")
    db.session.commit()
    return job, sent, finisher


def _end(job_id: str, status: JobStatus, message: str, error: str | None = None,
         allowed: tuple[JobStatus, ...] = ACTIVE, **fields: Any) -> models.Job | None:
    job = locked(job_id)
    if job is None or job.status not in allowed:
        db.session.rollback()
        return None
    job.status, job.error, job.finished_at = status, error, now()
    for name, value in fields.items():
        setattr(job, name, value)
    db.session.commit()
    log_line(job_id, message)
    db.session.commit()
    return job


def fail(job_id: str, error: str) -> models.Job | None:
    log.warning("job %s failed: %s", job_id, error)
    db.session.rollback()  # whatever the failing task had half-written is not kept
    return _end(job_id, JobStatus.FAILED, f"failed: {error}", error)


def cancel(job_id: str) -> models.Job | None:
    db.session.rollback()  # whatever the cancelled task had half-written is not kept
    return _end(job_id, JobStatus.CANCELLED, "cancelled; partial files removed")


def finish(job_id: str, error: str | None, summary: dict[str, Any], output: str) -> models.Job | None:
    """select's end: done with the dataset's summary, or failed with the reason nothing was kept;
    what the caller changed in this transaction (every URL's outcome) is committed with it."""
    status = JobStatus.FAILED if error else JobStatus.DONE
    count = int(summary.get("count", 0))
    message = f"failed: {error}" if error else f"done: saved {count} images to {output}"
    return _end(job_id, status, message, error, (JobStatus.RUNNING,), stage=Stage.DONE, **summary)


# -- the sweep: every job that is not final is owned by it ----------------------------------------

def _waiting(job: models.Job, waiting_ids: Set[str]) -> bool:
    """True when a task of this job still waits in a queue: it is waiting its turn, not lost."""
    return any(task["id"] in waiting_ids for task in job.task_ids or [])


def stalled(resend_after_s: float, waiting_ids: Set[str] = frozenset()) -> list[models.Job]:
    """Queued or running jobs without a sign of life for `resend_after_s` and nothing of theirs
    waiting in a queue: their message or their worker was lost. Their heartbeat is reset, so a
    step is re-sent once per period, not at every sweep."""
    cutoff = now() - dt.timedelta(seconds=resend_after_s)
    last = func.coalesce(models.Job.heartbeat_at, models.Job.created_at)
    query = (select(models.Job).where(models.Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)), last < cutoff)
             .with_for_update(skip_locked=True))
    lost = [job for job in db.session.scalars(query).all() if not _waiting(job, waiting_ids)]
    for job in lost:
        job.heartbeat_at = now()
    db.session.commit()
    return lost


def overdue(stall_timeout_s: float, cancel_grace_s: float,
            waiting_ids: Set[str] = frozenset()) -> tuple[list[str], list[str]]:
    """Running jobs nobody has worked on for too long (to fail), and cancels that no task
    finished (to end): (to_fail, to_cancel)."""
    cutoff, cancel_cutoff = now() - dt.timedelta(seconds=stall_timeout_s), now() - dt.timedelta(seconds=cancel_grace_s)
    query = select(models.Job).where(models.Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)))
    to_fail, to_cancel = [], []
    for job in db.session.scalars(query).all():
        last = job.heartbeat_at or job.started_at or job.created_at
        if job.status == JobStatus.CANCELLING and last < cancel_cutoff:
            to_cancel.append(job.id)
        elif job.status == JobStatus.RUNNING and last < cutoff and not _waiting(job, waiting_ids):
            to_fail.append(job.id)
    db.session.commit()
    return to_fail, to_cancel
