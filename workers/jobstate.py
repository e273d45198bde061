"""A job as the tasks see it: its settings and folders, whether to work on it, and the lifecycle's
endings (fail, cancel, sweep) followed by removing the job's scratch files.

The transitions themselves live in `common.lifecycle`.
"""

from __future__ import annotations

import logging
from collections.abc import Set as AbstractSet
from pathlib import Path

from flask import current_app

from common import lifecycle
from common.config import Settings
from common.db import db
from common.lifecycle import cancel_requested, heartbeat, locked, log_line, now, stalled

__all__ = ["JobError", "active", "cancel_requested", "fail", "heartbeat", "dataset_spec", "job_settings", "locked", "log_line",
           "now", "output_dir", "stalled", "staging_dir", "stop_cancelled", "sweep"]
from common.models import FINAL_STATUSES, Job
from common.pipeline import export
from common.pipeline.classes import DatasetSpec
from common.pipeline.export import OutputError

log = logging.getLogger(__name__)


class JobError(Exception):
    """The job cannot go on; the message is shown to the user as the job's error."""


def base_settings() -> Settings:
    """The app's settings (read from the environment when the worker started)."""
    return current_app.config["CVDB_SETTINGS"]


def job_settings(job: Job) -> Settings:
    """The worker's settings with the options the job was submitted with, validated again."""
    options = {k: v for k, v in (job.options or {}).items() if k in Settings.model_fields}
    return Settings(**{**base_settings().model_dump(), **options})


def dataset_spec(job: Job) -> DatasetSpec:
    """The classes and shape the job asked for (its `queries`, `split`, `seed`, `balance`)."""
    shape = (job.options or {}).get("dataset", {})
    split = shape.get("split")
    return DatasetSpec(tuple(job.labels), job.request_limit, bool(shape.get("balance")),
                       tuple(split) if split else None, int(shape.get("seed") or 0),
                       exclude=tuple(shape.get("exclude") or ()), like=tuple(shape.get("like") or ()))


def output_dir(job: Job, settings: Settings) -> Path:
    try:
        return job.folder(settings.data_root)
    except OutputError as exc:
        raise JobError(str(exc)) from exc


def staging_dir(job: Job, settings: Settings) -> Path:
    """The job's scratch folder, made if needed: a real folder inside its output folder, never a symlink."""
    try:
        return export.make_staging(output_dir(job, settings))
    except OutputError as exc:
        raise JobError(str(exc)) from exc


def active(job_id: str) -> Job | None:
    """The job if a task should work on it; None if it is gone, finished or being cancelled."""
    job = db.session.get(Job, job_id, populate_existing=True)
    if job is None or job.status in FINAL_STATUSES:
        return None
    if job.cancel_requested:
        stop_cancelled(job_id)
        return None
    return job


def fail(job_id: str, error: str) -> bool:
    job = lifecycle.fail(job_id, without_server_paths(error))
    if job is not None:
        _remove_staging(job)
    return job is not None


def without_server_paths(message: str) -> str:
    """A job's error is shown to API clients: folders are named relative to the data folder."""
    root = str(base_settings().data_root.expanduser().resolve())
    return message.replace(root + "/", "").replace(root, "the data folder")


def stop_cancelled(job_id: str) -> bool:
    job = lifecycle.cancel(job_id)
    if job is not None:
        _remove_staging(job)
    return job is not None


def _remove_staging(job: Job) -> None:
    """Scratch files go; the folder and its owner marker go too if the job left nothing else in it."""
    try:
        out = output_dir(job, job_settings(job))
        export.remove_staging(out)
        export.release(out, job.id)
    except (JobError, OutputError):
        return  # a folder outside the data root or a symlink: nothing to remove through it


def sweep(stall_timeout_s: float, cancel_grace_s: float = 5.0,
          waiting_ids: AbstractSet[str] = frozenset()) -> list[str]:
    """Fail running jobs nobody has worked on for too long; finish cancels no task finished.

    A worker killed outright holds its unacknowledged task until the broker's visibility
    timeout, hours later; the sweep is what tells the user sooner.
    """
    to_fail, to_cancel = lifecycle.overdue(stall_timeout_s, cancel_grace_s, waiting_ids)
    minutes = round(stall_timeout_s / 60, 1)
    failed = [job_id for job_id in to_fail
              if fail(job_id, f"no progress for {minutes} minutes: a worker probably died; submit the job again")]
    return failed + [job_id for job_id in to_cancel if stop_cancelled(job_id)]
