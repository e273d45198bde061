"""A job's state in Postgres as the tasks see it: load, lock, log, heartbeat, fail, cancel, sweep.

Every change here is guarded by the job's status, so a task that runs twice (acks_late
redelivery) or late (after a cancel) cannot move a finished job again.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Set as AbstractSet
from pathlib import Path

from flask import current_app
from sqlalchemy import select, update

from common.config import Settings
from common.db import db
from common.models import FINAL_STATUSES, Job, log_entry
from common.pipeline import export
from common.pipeline.export import OutputError

log = logging.getLogger(__name__)


class JobError(Exception):
    """The job cannot go on; the message is shown to the user as the job's error."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def base_settings() -> Settings:
    """The app's settings (read from the environment when the worker started)."""
    return current_app.config["CVDB_SETTINGS"]


def job_settings(job: Job) -> Settings:
    """The worker's settings with the options the job was submitted with, validated again."""
    options = {k: v for k, v in (job.options or {}).items() if k in Settings.model_fields}
    return Settings(**{**base_settings().model_dump(), **options})


def output_dir(job: Job, settings: Settings) -> Path:
    try:
        return job.folder(settings.data_root)
    except OutputError as exc:
        raise JobError(str(exc)) from exc


def staging_dir(job: Job, settings: Settings) -> Path:
    return output_dir(job, settings) / export.STAGING


def locked(job_id: str) -> Job | None:
    """The job row, locked until the next commit: fan-in and status changes go through here."""
    return db.session.get(Job, job_id, with_for_update=True, populate_existing=True)


def active(job_id: str) -> Job | None:
    """The job if a task should work on it; None if it is gone, finished or being cancelled."""
    job = db.session.get(Job, job_id, populate_existing=True)
    if job is None or job.status in FINAL_STATUSES:
        return None
    if job.cancel_requested:
        stop_cancelled(job_id)
        return None
    return job


def cancel_requested(job_id: str) -> bool:
    flag = db.session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one_or_none()
    return flag is None or bool(flag)  # a deleted job counts as cancelled


def log_line(job_id: str, message: str) -> None:
    """Append one timestamped line in a single UPDATE, so concurrent tasks never lose lines."""
    line = log_entry(message)
    db.session.execute(update(Job).where(Job.id == job_id).values(log=Job.log + line, heartbeat_at=now()))


def heartbeat(job_id: str) -> None:
    db.session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=now()))


def _finish(job_id: str, status: str, message: str, error: str | None = None) -> bool:
    db.session.rollback()  # whatever the failing task had half-written is not kept
    job = locked(job_id)
    if job is None or job.status in FINAL_STATUSES:
        db.session.rollback()
        return False
    job.status, job.error, job.finished_at = status, error, now()
    db.session.commit()
    log_line(job_id, message)
    db.session.commit()
    _remove_staging(job)
    return True


def fail(job_id: str, error: str) -> bool:
    log.warning("job %s failed: %s", job_id, error)
    return _finish(job_id, "failed", f"failed: {error}", error)


def stop_cancelled(job_id: str) -> bool:
    return _finish(job_id, "cancelled", "cancelled; partial files removed")


def _remove_staging(job: Job) -> None:
    """Scratch files go; the output folder goes too if the job left nothing else in it."""
    try:
        out = output_dir(job, job_settings(job))
    except JobError:
        return
    shutil.rmtree(out / export.STAGING, ignore_errors=True)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _waiting(job: Job, waiting_ids: AbstractSet[str]) -> bool:
    """True when a task of this job still waits in a queue: it is waiting its turn, not lost."""
    return any(task["id"] in waiting_ids for task in job.task_ids or [])


def stalled(resend_after_s: float, waiting_ids: AbstractSet[str] = frozenset()) -> list[Job]:
    """Running jobs without progress for `resend_after_s` and nothing queued: a task was lost.

    Their heartbeat is reset, so a step is re-sent once per period, not at every sweep.
    """
    cutoff = now() - dt.timedelta(seconds=resend_after_s)
    jobs = db.session.scalars(select(Job).where(Job.status == "running", Job.heartbeat_at < cutoff)
                              .with_for_update(skip_locked=True)).all()
    lost = [job for job in jobs if not _waiting(job, waiting_ids)]
    for job in lost:
        job.heartbeat_at = now()
    db.session.commit()
    return lost


def sweep(stall_timeout_s: float, cancel_grace_s: float = 5.0,
          waiting_ids: AbstractSet[str] = frozenset()) -> list[str]:
    """Fail running jobs nobody has worked on for too long; finish cancels no task finished.

    A worker killed outright holds its unacknowledged task until the broker's visibility
    timeout, hours later; the sweep is what tells the user sooner.
    """
    swept: list[str] = []
    cutoff, cancel_cutoff = now() - dt.timedelta(seconds=stall_timeout_s), now() - dt.timedelta(seconds=cancel_grace_s)
    jobs = db.session.scalars(select(Job).where(Job.status.in_(("running", "cancelling")))).all()
    for job in jobs:
        last = job.heartbeat_at or job.started_at or job.created_at
        if job.status == "cancelling" and last < cancel_cutoff and stop_cancelled(job.id):
            swept.append(job.id)
        elif job.status == "running" and last < cutoff and not _waiting(job, waiting_ids):
            minutes = round(stall_timeout_s / 60, 1)
            if fail(job.id, f"no progress for {minutes} minutes: a worker probably died; submit the job again"):
                swept.append(job.id)
    return swept
