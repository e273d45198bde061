"""Search inside a finished job's dataset, by text or by an uploaded picture.

The model lives on the GPU worker, so a search is a task on its queue; the answer comes back on a
Redis list this request waits on (BLPOP) for a bounded time.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import redis
from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from api import queue, signing
from api.jobs import ApiError, _api_error, _int_arg, _job_or_404, _require_done, settings
from common.pipeline import export

bp = Blueprint("search", __name__, url_prefix="/api")
bp.register_error_handler(ApiError, _api_error)
UPLOAD_BYTES = 5 * 1024 * 1024  # a picture to search by
WAIT_S = 60  # the GPU worker may be finishing a job's embed step first


@bp.get("/jobs/<job_id>/search")
def search_by_text(job_id: str) -> ResponseReturnValue:
    """?q=text&top=K: the dataset's pictures closest to the text, best first."""
    text = (request.args.get("q") or "").strip()
    if not text or len(text) > 200:
        raise ApiError(400, "bad_request", "q must be the text to look for, 1 to 200 characters.")
    return _ask(job_id, {"text": text})


@bp.post("/jobs/<job_id>/search")
def search_by_picture(job_id: str) -> ResponseReturnValue:
    """The request body is a picture (Content-Type image/*, at most 5 MiB): its closest pictures, best first."""
    if not (request.mimetype or "").startswith("image/"):
        raise ApiError(415, "unsupported_media_type", "Send the picture itself as the body, with an image/* "
                       "Content-Type (e.g. curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg').")
    data = request.get_data(cache=False)
    if not data:
        raise ApiError(400, "bad_request", "The body is empty; send the picture to search by.")
    return _ask(job_id, {"picture": base64.b64encode(data).decode()})


def _ask(job_id: str, query: dict[str, str]) -> ResponseReturnValue:
    job = _job_or_404(job_id)
    _require_done(job)
    top = _int_arg("top", 20, 1, 1000)
    reply_to = f"cvdb:search:{uuid.uuid4()}"
    try:
        queue.enqueue(str(uuid.uuid4()), "workers.tasks.find", "gpu", job.id, query, top, reply_to)
        client = redis.Redis.from_url(settings().redis_url, socket_timeout=WAIT_S + 5)
        answer = client.blpop([reply_to], timeout=WAIT_S)
    except redis.RedisError as exc:
        raise ApiError(503, "service_unavailable", "The job queue (Redis) is unreachable; try again later.") from exc
    if answer is None:
        raise ApiError(503, "service_unavailable", f"The GPU worker did not answer within {WAIT_S} s; it may be "
                       "embedding another job. Try again shortly.")
    result: dict[str, Any] = json.loads(answer[1])
    if "error" in result:
        raise ApiError(409, "conflict", result["error"])
    folder = settings().data_root / job.out_dir
    for hit in result["hits"]:
        file = hit.get("file")
        hit["url"] = signing.link(f"/api/jobs/{job.id}/images/{file}") if export.is_image(folder, file) else None
    return jsonify({"id": job.id, "hits": result["hits"]})
