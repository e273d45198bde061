"""Job state rules the tasks rely on, against a real Postgres: fan-in once, give up a chunk that
keeps killing workers, stop at the cancel flag, sweep stalled jobs. No worker runs here."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import time

import flask_migrate
import numpy as np
import pytest
import torch
from flask import Flask
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError, OperationalError

from api import create_app
from common import lifecycle
from common.config import Settings
from common.db import db
from common.lifecycle import Stage
from common.models import Candidate, Job
from common.pipeline import staging
from common.pipeline.accept import StagedImage
from common.pipeline.dedup import Fingerprint
from common.pipeline.progress import Cancelled
from service_harness import create_database, drop_database
from workers import jobstate, stages


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    url = create_database()
    settings = Settings(data_root=tmp_path_factory.mktemp("jobflow"), database_url=url)
    app = create_app({"CVDB_SETTINGS": settings, "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        flask_migrate.upgrade()
        yield app
        db.session.remove()
        db.engine.dispose()
    drop_database(url)


def make_job(stage: str = "fetch", status: str = "running", chunks: int = 2, **fields: object) -> str:
    values: dict[str, object] = {"task_ids": [], "options": {}, **fields}
    job = Job(query="cat", request_limit=5, out_dir=f"cats-{id(fields)}-{stage}", source="urls", status=status,
              stage=stage, log="", fetch_chunks_total=chunks, heartbeat_at=jobstate.now(), **values)
    db.session.add(job)
    db.session.flush()
    for chunk in range(chunks):
        for i in range(3):
            db.session.add(Candidate(job_id=job.id, url=f"http://x/{chunk}/{i}", rank=chunk * 3 + i,
                                     source="urls", chunk=chunk))
    db.session.commit()
    return job.id


def mark_fetched(job_id: str, chunk: int) -> None:
    for row in db.session.query(Candidate).filter_by(job_id=job_id, chunk=chunk):
        row.fetched = True
    db.session.commit()


def reload(job_id: str) -> Job:
    db.session.expire_all()
    job = db.session.get(Job, job_id)
    assert job is not None
    return job


def test_fan_in_moves_to_embed_once_when_the_last_chunk_is_done(app: Flask) -> None:
    job_id = make_job()
    mark_fetched(job_id, 0)
    assert stages.fan_in(job_id) is False
    assert reload(job_id).fetch_chunks_done == 1
    mark_fetched(job_id, 1)
    assert stages.fan_in(job_id) is True
    assert stages.fan_in(job_id) is False  # a redelivered last chunk starts nothing again
    job = reload(job_id)
    assert job.stage == "embed" and job.fetch_chunks_done == 2
    assert job.log.count("all chunks fetched") == 1


def test_a_chunk_that_keeps_killing_workers_is_given_up(app: Flask) -> None:
    job_id = make_job(chunks=1)
    limit = Settings().max_chunk_attempts
    assert all(stages._count_attempt(job_id, 0) for _ in range(limit))
    assert stages._count_attempt(job_id, 0) is False
    rows = db.session.query(Candidate).filter_by(job_id=job_id).all()
    assert {(r.status, r.reason, r.fetched) for r in rows} == {("dropped", "worker_lost", True)}
    assert stages.fan_in(job_id) is True


def test_a_task_stops_at_the_cancel_flag_and_the_job_ends_cancelled(app: Flask) -> None:
    job_id = make_job(stage="embed", cancel_requested=True, status="cancelling")
    assert stages.run_embed(job_id, embedder=None) is False  # type: ignore[arg-type]
    job = reload(job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert "cancelled" in job.log


class CancelledMidway:
    """A stand-in embedder: after its first batch a cancel arrives the way the API sends one (its own
    connection), and the batch lasts past JobProgress's re-read interval, so the next check must see it."""

    device, dim = torch.device("cpu"), 4

    def __init__(self, job_id: str) -> None:
        self.job_id, self.batches = job_id, 0

    def embed_crops(self, pixels: np.ndarray) -> np.ndarray:
        self.batches += 1
        if self.batches == 1:
            with db.engine.begin() as connection:
                connection.execute(update(Job).where(Job.id == self.job_id)
                                   .values(cancel_requested=True, status="cancelling"))
            time.sleep(0.6)  # past JobProgress.every_s (0.5): the flag is read before the next batch
        return np.tile(np.eye(1, self.dim, dtype=np.float32), (len(pixels), 1))

    def describe(self) -> dict[str, str]:
        return {"device": "cpu"}


def stage_for_embedding(job_id: str, images: int, crop: bool = True) -> None:
    """Put `images` staged pictures in the job's staging folder with their candidate rows fetched
    (without CLIP's input crop, as an older version staged them, unless `crop`)."""
    job = reload(job_id)
    folder = jobstate.staging_dir(job, jobstate.job_settings(job))
    rows = db.session.query(Candidate).filter_by(job_id=job_id).order_by(Candidate.rank).all()
    for i, row in enumerate(rows[:images]):
        sha = f"{i:016x}" * 4  # staged files are named by the first 16 characters
        fingerprint = Fingerprint(sha, i, np.zeros((8, 8), np.uint8), np.zeros((4, 4, 3), np.float32))
        staging.save(StagedImage(row.url, sha, folder / f"{staging.key(sha)}.jpg", 64, 64, "jpeg", {}, fingerprint,
                                 np.zeros((3, 8, 8), np.uint8) if crop else None))
        row.fetched, row.sha256 = True, sha
    db.session.commit()


def test_embedding_stops_at_a_cancel_that_arrives_between_batches(app: Flask) -> None:
    job_id = make_job(stage="embed", chunks=3, options={"batch_size": 2})
    stage_for_embedding(job_id, 9)  # five batches of at most two
    embedder = CancelledMidway(job_id)
    with pytest.raises(Cancelled):
        stages.run_embed(job_id, embedder)  # type: ignore[arg-type]
    assert embedder.batches == 1
    folder = jobstate.staging_dir(reload(job_id), Settings(data_root=app.config["CVDB_SETTINGS"].data_root))
    assert len(list(folder.glob("*.clip.npy"))) == 2  # the first batch only


def test_pictures_staged_without_a_crop_fail_the_embed_step_with_what_to_do(app: Flask) -> None:
    job_id = make_job(stage="embed", chunks=3, options={"batch_size": 2})
    stage_for_embedding(job_id, 3, crop=False)
    with pytest.raises(jobstate.JobError, match="staged by an older version .* submit the job again"):
        stages.run_embed(job_id, CancelledMidway(job_id))  # type: ignore[arg-type]


def test_progress_sees_a_cancel_made_by_another_connection(app: Flask) -> None:
    job_id = make_job()
    progress = stages.JobProgress(job_id, every_s=0.0)
    assert progress.cancelled() is False
    with db.engine.begin() as other:
        other.execute(Job.__table__.update().where(Job.id == job_id).values(cancel_requested=True))
    assert progress.cancelled() is True


def test_sweep_fails_stalled_jobs_and_resends_quiet_ones(app: Flask) -> None:
    old = jobstate.now() - dt.timedelta(hours=2)
    stalled, quiet, fresh = make_job(), make_job(), make_job()
    for job_id, heartbeat in ((stalled, old), (quiet, jobstate.now() - dt.timedelta(minutes=5))):
        reload(job_id).heartbeat_at = heartbeat
        db.session.commit()
    assert jobstate.sweep(stall_timeout_s=3600) == [stalled]
    job = reload(stalled)
    assert job.status == "failed" and "worker probably died" in (job.error or "")
    resend = [j.id for j in jobstate.stalled(resend_after_s=60)]
    assert resend == [quiet]
    assert jobstate.stalled(resend_after_s=60) == []  # once per period, not at every sweep
    assert reload(fresh).status == "running"


def test_sweep_finishes_a_cancel_whose_tasks_never_ran(app: Flask, tmp_path: Path) -> None:
    job_id = make_job(status="cancelling", cancel_requested=True)
    reload(job_id).heartbeat_at = jobstate.now() - dt.timedelta(seconds=30)
    db.session.commit()
    assert job_id in jobstate.sweep(stall_timeout_s=3600, cancel_grace_s=5)
    assert reload(job_id).status == "cancelled"


def test_select_redelivered_after_its_export_finishes_the_job_from_report(app: Flask) -> None:
    job_id = make_job(stage="select", chunks=1)
    job = reload(job_id)
    out = Path(app.config["CVDB_SETTINGS"].data_root) / job.out_dir
    out.mkdir(parents=True)
    outcomes = [{"url": "http://x/0/0", "status": "kept", "sha256": "ab"},
                {"url": "http://x/0/1", "status": "dropped", "reason": "blurry", "detail": "soft"},
                {"url": "http://x/0/2", "status": "dropped", "reason": "other_cluster", "detail": "cluster 2"}]
    report = {"counts": {"candidates": 3, "kept": 1}, "dropped": {"blurry": 1, "other_cluster": 1},
              "chosen_cluster": 0, "selection_reason": "best match", "clusters": [], "outcomes": outcomes}
    (out / "report.json").write_text(json.dumps(report))
    (out / "manifest.jsonl").write_text('{"file": "img_0001.jpg"}\n')
    stages.run_select(job_id, embedder=None)  # type: ignore[arg-type]
    job = reload(job_id)
    assert (job.status, job.count, job.drop_counts) == ("done", 1, {"blurry": 1, "other_cluster": 1})
    rows = {r.url: (r.status, r.reason) for r in db.session.query(Candidate).filter_by(job_id=job_id)}
    assert rows == {"http://x/0/0": ("kept", None), "http://x/0/1": ("dropped", "blurry"),
                    "http://x/0/2": ("dropped", "other_cluster")}


def test_a_job_whose_task_waits_in_a_queue_is_neither_resent_nor_failed(app: Flask) -> None:
    waiting = make_job(task_ids=[{"id": "queued-task", "queue": "cpu"}])
    reload(waiting).heartbeat_at = jobstate.now() - dt.timedelta(hours=2)
    db.session.commit()
    assert waiting not in jobstate.sweep(stall_timeout_s=60, waiting_ids={"queued-task"})
    assert waiting not in [j.id for j in jobstate.stalled(60, {"queued-task"})]
    assert reload(waiting).status == "running"
    assert waiting in [j.id for j in jobstate.stalled(60, set())]


def test_a_search_that_finds_nothing_fails_the_job_with_a_reason(app: Flask) -> None:
    job = Job(query="nothing", request_limit=5, out_dir="nothing-found", source="urls", status="queued",
              options={"urls": ["   ", "# only a comment"]}, log="", task_ids=[])
    db.session.add(job)
    db.session.commit()
    with pytest.raises(jobstate.JobError, match="contains no URLs"):
        stages.run_search(job.id)


def test_a_queued_job_whose_message_was_lost_is_resent_by_the_sweep(app: Flask) -> None:
    lost = make_job(stage=None, status="queued", task_ids=[{"id": "lost-task", "queue": "cpu"}])
    waiting = make_job(stage=None, status="queued", task_ids=[{"id": "waiting-task", "queue": "cpu"}])
    for job_id in (lost, waiting):
        job = reload(job_id)
        job.heartbeat_at, job.created_at = None, jobstate.now() - dt.timedelta(minutes=10)
        db.session.commit()
    assert [j.id for j in jobstate.stalled(60, {"waiting-task"})] == [lost]
    assert jobstate.stalled(60, {"waiting-task"}) == []  # once per period
    assert reload(lost).status == "queued"  # the re-sent search starts it, nothing else changes


def test_lifecycle_moves_a_job_once_and_never_out_of_a_final_status(app: Flask) -> None:
    job_id = make_job(stage="embed")
    assert lifecycle.advance(job_id, Stage.EMBED, Stage.SELECT, "to select") is True
    assert lifecycle.advance(job_id, Stage.EMBED, Stage.SELECT, "again") is False  # a redelivered step
    assert lifecycle.finish(job_id, None, {"count": 3}, "out") is not None
    assert lifecycle.fail(job_id, "late failure") is None and lifecycle.cancel(job_id) is None
    job = reload(job_id)
    assert (job.status, job.stage, job.count, job.error) == ("done", "done", 3, None)
    assert job.log.count("to select") == 1 and "late failure" not in job.log


def test_a_unit_of_work_is_retried_whole_while_the_database_is_away(app: Flask) -> None:
    calls: list[int] = []

    def work() -> str:
        calls.append(1)
        if len(calls) < 3:  # the first two runs meet a server that is restarting
            raise OperationalError("SELECT 1", {}, Exception("the database system is starting up"))
        return "done"

    assert lifecycle.with_db_retry(work, "test", budget_s=30) == "done" and len(calls) == 3
    def raises(exc: Exception) -> Callable[[], None]:
        def run() -> None:
            calls.append(1)
            raise exc
        return run

    calls.clear()
    with pytest.raises(OperationalError):  # past its budget the error goes to the caller
        lifecycle.with_db_retry(raises(OperationalError("x", {}, Exception("down"))), "test", budget_s=0)
    with pytest.raises(IntegrityError):  # not transient: never retried
        lifecycle.with_db_retry(raises(IntegrityError("x", {}, Exception("dup"))), "test", budget_s=30)
    assert len(calls) == 2
