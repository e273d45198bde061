"""Job and candidate rows: the state a job's tasks share through Postgres."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from common.db import db
from common.lifecycle import FINAL, JobStatus
from common.pipeline.export import resolve_output

JOB_STATUSES: tuple[str, ...] = tuple(status.value for status in JobStatus)
FINAL_STATUSES: frozenset[str] = frozenset(status.value for status in FINAL)
CANDIDATE_STATUSES: tuple[str, ...] = ("pending", "kept", "dropped")


def _in(column: str, values: tuple[str, ...]) -> str:
    """SQL text for `column IN (...)`; values are constants of this module, never user input."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def log_entry(message: str) -> str:
    """One line of a job's log: UTC time, then the message."""
    return f"{datetime.now(UTC).strftime('%H:%M:%S')} {message.rstrip()}\n"


def _new_id() -> str:
    return str(uuid.uuid4())


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Job(db.Model):
    """One dataset request and its progress through search, fetch, embed and select."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JOB_STATUSES), name="status"),
        # A folder belongs to one unfinished job: concurrent submissions naming it race on this index.
        Index("ix_jobs_out_dir_active", "out_dir", unique=True, postgresql_where=text(
            _in("status", tuple(s for s in JOB_STATUSES if s not in FINAL_STATUSES)))),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_new_id)
    query: Mapped[str] = mapped_column(String(200))
    request_limit: Mapped[int] = mapped_column(Integer)
    out_dir: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(32))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    stage: Mapped[str | None] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    log: Mapped[str] = mapped_column(Text, default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Submitted through the original tool's POST /api/run: answered in the original's words.
    original_route: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # Every Celery task sent for the job, as {"id", "queue"}: cancel revokes them all.
    task_ids: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    stage_counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    drop_counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # Fan-in: the fetch chunk that brings done up to total enqueues the GPU step.
    fetch_chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    fetch_chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    # How often each fetch chunk was started: a chunk that keeps killing workers is given up.
    chunk_attempts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # The selection's summary (clusters, chosen one, reason) once the job is done or failed.
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Last sign of life from a task; the sweep fails jobs whose heartbeat is too old.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    candidates: Mapped[list[Candidate]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def labels(self) -> list[str]:
        """The job's classes: its `queries`, or the one query."""
        return list((self.options or {}).get("dataset", {}).get("queries") or [self.query])

    def folder(self, data_root: Path) -> Path:
        """The job's output folder, refused (OutputError) if it would resolve outside `data_root`."""
        return resolve_output(data_root / self.out_dir, data_root)

    def record_task(self, queue: str) -> str:
        """A new task id, recorded before the task is sent (commit, then send): cancel revokes it."""
        task_id = str(uuid.uuid4())
        self.task_ids = [*(self.task_ids or []), {"id": task_id, "queue": queue}]
        return task_id

    def append_log(self, line: str) -> None:
        """Add one line to the job's log (kept as text so the API can return it as is)."""
        self.log = f"{self.log or ''}{log_entry(line)}"

    def to_dict(self) -> dict[str, Any]:
        """The job as the API shows it (no candidate rows, no task ids)."""
        return {
            "id": self.id,
            "query": self.query,
            "queries": self.labels,
            "limit": self.request_limit,
            "out_dir": self.out_dir,
            "source": self.source,
            "options": self.options or {},
            "status": self.status,
            "stage": self.stage,
            "count": self.count or 0,
            "error": self.error,
            "cancel_requested": bool(self.cancel_requested),
            "stage_counts": self.stage_counts or {},
            "drop_counts": self.drop_counts or {},
            "fetch_chunks": {
                "done": self.fetch_chunks_done or 0,
                "total": self.fetch_chunks_total or 0,
            },
            "result": self.result or {},
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


class Candidate(db.Model):
    """One candidate image URL of a job and its outcome (kept, or dropped with a reason)."""

    __tablename__ = "candidates"
    __table_args__ = (
        UniqueConstraint("job_id", "url"),
        CheckConstraint(_in("status", CANDIDATE_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(Text)
    rank: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(32))
    # Search metadata (thumbnail, page, title, size) as the source gave it.
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Which fetch chunk downloads it, and whether that chunk has dealt with it yet.
    chunk: Mapped[int] = mapped_column(Integer, default=0)
    fetched: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    # Scores and other per-URL facts for report.json (sizes, sharpness, cluster).
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    job: Mapped[Job] = relationship(back_populates="candidates")
