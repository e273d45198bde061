"""The jobs API: submit, list, inspect, read results, cancel, delete. Views validate, write, enqueue."""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    request,
    send_from_directory,
)
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from sqlalchemy import Integer, case, func, select
from sqlalchemy.exc import IntegrityError
from zipstream import ZIP_STORED, ZipStream

from api import original, queue, signing
from api.schemas import JobRequest
from common import lifecycle
from common.config import Settings
from common.db import db
from common.models import FINAL_STATUSES, JOB_STATUSES, Candidate, Job
from common.names import IMAGE_FILE, slug
from common.pipeline import export, reasons
from common.pipeline.export import MANIFEST, REPORT, OutputError, resolve_output

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, url_prefix="/api")
ACTIVE = lifecycle.ACTIVE


def settings() -> Settings:
    return current_app.config["CVDB_SETTINGS"]


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> ResponseReturnValue:
    return jsonify({"error": exc.error, "detail": exc.detail}), exc.status


def _json_body() -> dict[str, Any]:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Send the request body as JSON (Content-Type: application/json).")
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # e.g. 5,000 nested '[': the parser gives up before it finds an error
        raise ApiError(400, "bad_request", "The JSON body is nested too deeply; send a flat JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object, e.g. {\"query\": \"cat\", \"limit\": 50}.")
    return body


def _validation_detail(exc: ValidationError) -> list[dict[str, str]]:
    # Our own validators' messages are sentences already; pydantic prefixes them with "Value error, ".
    return [{"field": ".".join(map(str, e["loc"])) or "body", "message": e["msg"].removeprefix("Value error, ")}
            for e in exc.errors()]


def _job_or_404(job_id: str) -> Job:
    try:
        uuid.UUID(job_id)
    except ValueError:
        raise ApiError(404, "not_found", f"No job {job_id!r}: job ids are UUIDs as returned by POST /api/jobs.") from None
    job = db.session.get(Job, job_id)
    if job is None:
        raise ApiError(404, "not_found", f"No job {job_id}; it may have been deleted.")
    return job


def _out_dir(job: Job) -> Path:
    return job.folder(settings().data_root)


@bp.post("/jobs")
def create_job() -> ResponseReturnValue:
    response, status = _submit(_json_body())
    return jsonify(response), status


@bp.post("/run")
def run_alias() -> ResponseReturnValue:
    """The original dashboard's call: {query, limit, out_dir}; answers with `job_id` besides our fields,
    and with `detail` as one sentence when the request is refused."""
    try:
        body = _json_body()
        job_id = str(uuid.uuid4())
        if "out_dir" in body and "output" in body:
            raise ApiError(422, "validation_error", [{"field": "out_dir", "message": "give either out_dir (the "
                                                      "original's folder path) or output (a folder name), not both"}])
        if "out_dir" in body:
            out_dir = body.pop("out_dir")
            if not isinstance(out_dir, str):
                raise ApiError(422, "validation_error", [{"field": "out_dir", "message": "must be a folder path, "
                                                          "e.g. data/naver_collected"}])
            try:
                body["output"] = original.output_for(out_dir, job_id)
            except original.OutDirError as exc:
                raise ApiError(422, "validation_error", [{"field": "out_dir", "message": str(exc)}]) from None
        response, status = _submit(body, job_id, original_route=True)
    except ApiError as exc:
        if isinstance(exc.detail, list):
            body = {"error": exc.error, "detail": original.sentence(exc.detail), "errors": exc.detail}
            return jsonify(body), exc.status
        raise
    return jsonify({"job_id": job_id, **response}), status


def _submit(body: dict[str, Any], job_id: str | None = None,
            original_route: bool = False) -> tuple[dict[str, Any], int]:
    try:
        spec = JobRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, "validation_error", _validation_detail(exc)) from None
    if spec.limit > settings().max_job_limit:
        detail = [{"field": "limit", "message": f"at most {settings().max_job_limit} on this server"}]
        raise ApiError(422, "validation_error", detail)
    active = db.session.scalar(select(func.count()).where(Job.status.in_(ACTIVE)))
    if active is not None and active >= settings().max_active_jobs:
        raise ApiError(429, "too_many_requests", f"{active} jobs are queued or running, the most this server "
                       "takes at once; submit again when some have finished.")
    job_id = job_id or str(uuid.uuid4())
    output = spec.output or f"{slug('-'.join(spec.labels))}-{job_id[:8]}"
    _check_output_free(output)
    query = ", ".join(spec.labels)[:200]
    job = Job(id=job_id, query=query, request_limit=spec.limit, out_dir=output, source=spec.source,
              options=spec.pipeline_options(), status="queued", log="", task_ids=[], original_route=original_route)
    db.session.add(job)
    task_id = job.record_task("cpu")
    each = " each" if len(spec.labels) > 1 else ""
    job.append_log(f"queued: {spec.limit} images{each} of {', '.join(map(repr, spec.labels))} from {spec.source} "
                   f"into {output}")
    try:
        db.session.commit()  # the row exists before any worker can look for it
    except IntegrityError as exc:  # the partial unique index: a concurrent submission claimed the folder first
        db.session.rollback()
        if "ix_jobs_out_dir_active" not in str(exc.orig):
            raise
        raise ApiError(409, "conflict", f"Another job claimed the output folder {output!r} just now; "
                       "pick another name.") from None
    try:
        queue.enqueue(task_id, "workers.tasks.search", "cpu", job_id)
    except Exception as exc:  # broker down: say so, and do not leave a job that never starts
        job.status, job.error = "failed", f"could not queue the job: {type(exc).__name__}"
        db.session.commit()
        raise ApiError(503, "service_unavailable", "The job queue (Redis) is unreachable; try again later.") from exc
    return {"id": job_id, "status": _shown_status(job), "links": _links(job_id)}, 202


def _check_output_free(output: str) -> None:
    try:
        out_dir = resolve_output(settings().data_root / output, settings().data_root)
    except OutputError as exc:
        raise ApiError(422, "validation_error", [{"field": "output", "message": str(exc)}]) from None
    if (settings().data_root / output).is_symlink():
        raise ApiError(409, "conflict", f"The output folder {output!r} is a symbolic link; the service never "
                       "writes through one, so pick another name.")
    if (out_dir / MANIFEST).exists() or (out_dir.exists() and any(out_dir.iterdir())):
        raise ApiError(409, "conflict", f"The output folder {output!r} already holds files; pick another name.")
    busy = db.session.scalar(select(func.count()).where(Job.out_dir == output, Job.status.in_(ACTIVE)))
    if busy:
        raise ApiError(409, "conflict", f"Another running job writes to {output!r}; pick another name.")


def _links(job_id: str) -> dict[str, str]:
    """Where to find the job's parts; result files are signed links when tokens are configured."""
    base = f"/api/jobs/{job_id}"
    return {"self": base, "log": f"{base}/log", "images": f"{base}/images",
            "manifest": signing.link(f"{base}/manifest"), "archive": signing.link(f"{base}/archive"),
            "cancel": f"{base}/cancel"}


def _progress(job_ids: list[str]) -> dict[str, dict[str, int]]:
    """Per-stage counts from the candidate rows: exact, and never counted twice."""
    as_int = lambda condition: func.sum(case((condition, 1), else_=0)).cast(Integer)  # noqa: E731
    rows = db.session.execute(
        select(Candidate.job_id, func.count(), as_int(Candidate.fetched),
               as_int(Candidate.fetched & (Candidate.status != "dropped")), as_int(Candidate.status == "kept"))
        .where(Candidate.job_id.in_(job_ids)).group_by(Candidate.job_id)
    ).all()
    found = {r[0]: {"candidates": r[1], "fetched": r[2], "accepted": r[3], "kept": r[4]} for r in rows}
    empty = {"candidates": 0, "fetched": 0, "accepted": 0, "kept": 0}
    return {job_id: found.get(job_id, dict(empty)) for job_id in job_ids}


def _shown_status(job: Job) -> str:
    return original.shown_status(job.status) if job.original_route else job.status


def job_out(job: Job, progress: dict[str, int]) -> dict[str, Any]:
    data = job.to_dict()
    data["output"] = data["out_dir"]  # `out_dir`: the original's name for it
    data["status"] = _shown_status(job)
    data["options"] = {k: v for k, v in data["options"].items() if k != "source_info"}
    data["progress"] = progress
    data["final"] = job.status in FINAL_STATUSES
    end = job.finished_at or datetime.now(UTC)
    data["elapsed_s"] = round((end - job.started_at).total_seconds(), 1) if job.started_at and end else None
    data["links"] = _links(job.id)
    return data


@bp.get("/reasons")
def list_reasons() -> ResponseReturnValue:
    """What each drop reason code means and at which stage it happens."""
    return jsonify({"reasons": reasons.catalogue()})


@bp.get("/jobs")
def list_jobs() -> ResponseReturnValue:
    page = _int_arg("page", 1, 1, 100000)
    per_page = _int_arg("per_page", 20, 1, 100)
    status = request.args.get("status")
    query = select(Job)
    if status is not None:
        if status not in JOB_STATUSES:
            raise ApiError(400, "bad_request", f"Unknown status {status!r}; use one of {', '.join(JOB_STATUSES)}.")
        query = query.where(Job.status == status)
    total = db.session.scalar(select(func.count()).select_from(query.subquery()))
    jobs = db.session.scalars(query.order_by(Job.created_at.desc(), Job.id).offset((page - 1) * per_page)
                              .limit(per_page)).all()
    progress = _progress([j.id for j in jobs])
    return jsonify({"jobs": [job_out(j, progress[j.id]) for j in jobs], "page": page, "per_page": per_page,
                    "total": total})


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
    if not re.fullmatch(r"[0-9]{1,9}", raw) or not low <= int(raw) <= high:
        raise ApiError(400, "bad_request", f"{name} must be a whole number from {low} to {high}.")
    return int(raw)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> ResponseReturnValue:
    job = _job_or_404(job_id)
    data = job_out(job, _progress([job.id])[job.id])
    data["log"] = job.log or ""  # the original's log page reads it here
    data["classes"] = _class_progress(job)
    if job.status not in FINAL_STATUSES:  # while it runs, count the drops recorded so far
        data["drop_counts"] = _drops_so_far(job.id)
    return jsonify(data)


def _class_progress(job: Job) -> list[dict[str, Any]]:
    """candidates / fetched / accepted / kept per class, from the rows' labels (a URL two classes'
    searches found counts in both)."""
    labels = job.labels
    counts = {label: {"label": label, "candidates": 0, "fetched": 0, "accepted": 0, "kept": 0} for label in labels}
    rows = db.session.execute(select(Candidate.meta, Candidate.fetched, Candidate.status, Candidate.extra)
                              .where(Candidate.job_id == job.id)).all()
    for meta, fetched, status, extra in rows:
        found = [label for label in (meta or {}).get("labels") or labels[:1] if label in counts]
        kept_in = (extra or {}).get("class") or labels[0] if status == "kept" else None
        for label in found:
            entry = counts[label]
            entry["candidates"] += 1
            entry["fetched"] += int(bool(fetched))
            entry["accepted"] += int(bool(fetched) and status != "dropped")
        if kept_in in counts:
            counts[kept_in]["kept"] += 1
    return list(counts.values())


def _drops_so_far(job_id: str) -> dict[str, int]:
    rows = db.session.execute(select(Candidate.reason, func.count()).where(
        Candidate.job_id == job_id, Candidate.status == "dropped").group_by(Candidate.reason)
        .order_by(func.count().desc())).all()
    return {reason or "dropped": count for reason, count in rows}


@bp.get("/jobs/<job_id>/log")
def get_log(job_id: str) -> ResponseReturnValue:
    job = _job_or_404(job_id)
    text = job.log or ""
    return jsonify({"id": job.id, "status": job.status, "log": text, "lines": text.splitlines()})


def _manifest_rows(job: Job) -> list[dict[str, Any]]:
    path = _out_dir(job) / MANIFEST
    if job.status != "done" or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@bp.get("/jobs/<job_id>/images")
def list_images(job_id: str) -> ResponseReturnValue:
    job = _job_or_404(job_id)
    folder = _own_folder(job)
    rows = export.manifest_rows(folder) if job.status == "done" else []
    # Only rows naming an img_NNNN.jpg file of the folder: a row naming ../../etc/x is not listed.
    rows = [r for r in rows if export.is_image(folder, r.get("file"))]
    images = [{"file": r["file"], "url": signing.link(f"/api/jobs/{job.id}/images/{r['file']}"),
               "label": r.get("label"), "split": r.get("split"), "manifest": r} for r in rows]
    # `job_id`, `out_dir` and `files` (names only) are what the original's page reads.
    return jsonify({"id": job.id, "count": len(images), "images": images, "job_id": job.id,
                    "out_dir": job.out_dir, "files": [image["file"] for image in images]})


@bp.get("/jobs/<job_id>/images/<path:name>")
def get_image(job_id: str, name: str) -> ResponseReturnValue:
    job = _job_or_404(job_id)
    if not IMAGE_FILE.fullmatch(name):
        raise ApiError(404, "not_found", f"No image {name!r}: image names look like img_0001.jpg or "
                       "train/<class>/img_0001.jpg.")
    folder = _own_folder(job)
    if job.status != "done" or not export.is_image(folder, name):  # a regular file, never a symlink
        raise ApiError(404, "not_found", f"Job {job.id} has no image {name}.")
    return send_from_directory(folder, name, mimetype="image/jpeg", max_age=3600)


@bp.get("/jobs/<job_id>/manifest")
def get_manifest(job_id: str) -> ResponseReturnValue:
    job = _job_or_404(job_id)
    _require_done(job)
    return send_from_directory(_out_dir(job), MANIFEST, mimetype="application/x-ndjson")


@bp.get("/jobs/<job_id>/report")
def get_report(job_id: str) -> ResponseReturnValue:
    job = _job_or_404(job_id)
    folder = _out_dir(job)
    if not (folder / REPORT).is_file():
        raise ApiError(404, "not_found", f"Job {job.id} has no report yet (status {job.status}).")
    return send_from_directory(folder, REPORT, mimetype="application/json")


def _require_done(job: Job) -> None:
    if job.status != "done" or not (_out_dir(job) / MANIFEST).is_file():
        raise ApiError(409, "conflict", f"Job {job.id} is {job.status}; its dataset exists once it is done.")


@bp.get("/jobs/<job_id>/archive")
def get_archive(job_id: str) -> ResponseReturnValue:
    """The dataset as a zip, streamed as it is read (JPEGs are stored, not recompressed)."""
    job = _job_or_404(job_id)
    out_dir = _own_folder(job)
    _require_done(job)
    archive = ZipStream(compress_type=ZIP_STORED, sized=True)
    # Whatever the manifest says, only the folder's own img_NNNN.jpg regular files go in.
    names = [r["file"] for r in export.manifest_rows(out_dir) if export.is_image(out_dir, r.get("file"))]
    names += [n for n in (*export.EXTRAS, REPORT, MANIFEST) if export.regular_file(out_dir / n)]  # the manifest last
    for name in dict.fromkeys(names):
        archive.add_path(str(out_dir / name), f"{job.out_dir}/{name}")
    headers = {"Content-Disposition": f'attachment; filename="{job.out_dir}.zip"', "Content-Length": str(len(archive))}
    return Response(archive, mimetype="application/zip", headers=headers)


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> ResponseReturnValue:
    job = _job_or_404(job_id)
    cancelling = lifecycle.request_cancel(job.id)
    if cancelling is None:
        db.session.refresh(job)
        raise ApiError(409, "conflict", f"Job {job.id} is already {job.status}; nothing to cancel.")
    job, sent, finisher = cancelling
    try:
        queue.revoke(sent)
        queue.enqueue(finisher, "workers.tasks.finish_cancel", "cpu", job.id, countdown=queue.CANCEL_GRACE_S)
    except Exception:  # Redis away: the flag stops every task that runs, and the sweep ends the cancel
        log.warning("job %s: cancel flag set, but its tasks could not be revoked now", job.id, exc_info=True)
    return jsonify(job_out(job, _progress([job.id])[job.id])), 202


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str) -> ResponseReturnValue:
    """Delete the history row and what the job wrote, only while the folder's marker names the job
    (another job may have reused the name); a user's own files and the folder they are in stay.
    A job from the original's POST /api/run leaves only the history: its page promises that."""
    job = _job_or_404(job_id)
    if job.status not in FINAL_STATUSES:
        raise ApiError(409, "conflict", f"Job {job.id} is {job.status}; cancel it first, then delete it.")
    try:
        if not job.original_route:
            export.remove_dataset(_own_folder(job), job.id)
    except OutputError:  # a symlinked marker or .staging: nothing is deleted through it
        raise ApiError(409, "conflict", f"Job {job.id} was not deleted: its folder holds a symbolic link "
                       "(.staging or .cvdb-owner), and the service never deletes through one.") from None
    except OSError as exc:
        raise ApiError(409, "conflict", f"Job {job.id} was not deleted: its files could not all be removed "
                       f"({exc.strerror}); try again.") from None
    db.session.delete(job)
    db.session.commit()
    return Response(status=204)


def _own_folder(job: Job) -> Path:
    """The job's folder by its own name: inside the data folder and not a symlink, or 409."""
    try:
        _out_dir(job)  # wherever the name leads, it must stay inside the data folder
        folder = settings().data_root.expanduser().resolve() / job.out_dir
        export.refuse_link(folder)
    except OutputError:
        raise ApiError(409, "conflict", f"Job {job.id}'s folder {job.out_dir!r} is a symbolic link or lies outside "
                       "the data folder; the service neither serves nor deletes anything through it.") from None
    return folder


@bp.post("/jobs/clear")
def clear_history() -> ResponseReturnValue:
    """The original's "clear history": finished jobs leave the list; their datasets stay on disk."""
    jobs = db.session.scalars(select(Job).where(Job.status.in_(tuple(FINAL_STATUSES)))).all()
    for job in jobs:
        db.session.delete(job)
    db.session.commit()
    return jsonify({"deleted": len(jobs)})

