"""The OpenAPI 3.1 document, generated from the pydantic schemas in `api.schemas`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import schemas
from common.lifecycle import JobStatus

JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
QUERY_TEXT = {"name": "q", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1, "maxLength": 200}}
TOP = {"name": "top", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
ERRORS = {"404": "No such job.", "409": "Not possible in the job's current state."}

# (method, path, summary, request model, (status, response model or media type), extra parameters, errors)
ROUTES: list[tuple[str, str, str, type[BaseModel] | str | None, tuple[str, Any], list[dict[str, Any]], tuple[str, ...]]] = [
    ("post", "/api/jobs", "Submit a job", schemas.JobRequest, ("202", schemas.JobCreated), [], ("409", "413", "415", "422", "429")),
    ("post", "/api/run", "Submit a job the original dashboard's way: `out_dir` as it sent it, `job_id` in the "
     "answer, `detail` always a sentence", schemas.RunRequest, ("202", schemas.RunCreated), [],
     ("409", "413", "415", "422", "429")),
    ("get", "/api/jobs", "List jobs, newest first", None, ("200", schemas.JobList), [
        {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100000}},
        {"name": "per_page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
        {"name": "status", "in": "query", "schema": {"type": "string", "enum": [s.value for s in JobStatus]}},
    ], ("400",)),
    ("get", "/api/jobs/{job_id}", "A job's status, progress, drop reasons, result and log", None,
     ("200", schemas.JobDetail), [JOB_ID], ("404",)),
    ("get", "/api/jobs/{job_id}/log", "The job's log", None, ("200", schemas.LogOut), [JOB_ID], ("404",)),
    ("get", "/api/jobs/{job_id}/images", "Kept images with their manifest rows", None,
     ("200", schemas.ImageList), [JOB_ID], ("404",)),
    ("get", "/api/jobs/{job_id}/images/{name}", "One kept image", None, ("200", "image/jpeg"),
     [JOB_ID, {"name": "name", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": r"^img_\d{4,6}\.jpg$"}}], ("404",)),
    ("get", "/api/jobs/{job_id}/manifest", "manifest.jsonl", None, ("200", "application/x-ndjson"), [JOB_ID],
     ("404", "409")),
    ("get", "/api/jobs/{job_id}/report", "report.json: every URL's outcome, clusters, thresholds", None,
     ("200", "application/json"), [JOB_ID], ("404",)),
    ("get", "/api/jobs/{job_id}/archive", "The dataset as a zip stream", None, ("200", "application/zip"),
     [JOB_ID], ("404", "409")),
    ("post", "/api/jobs/{job_id}/cancel", "Cancel a queued or running job", None, ("202", schemas.JobOut),
     [JOB_ID], ("404", "409")),
    ("delete", "/api/jobs/{job_id}", "Delete a finished job and its dataset (a job from "
     "POST /api/run: only its history entry, as the original did)", None, ("204", None),
     [JOB_ID], ("404", "409")),
    ("post", "/api/jobs/clear", "Remove finished jobs from the history (datasets stay on disk)", None,
     ("200", schemas.Cleared), [], ()),
    ("get", "/api/jobs/{job_id}/search", "Search a finished job's dataset by text (q), best matches first", None,
     ("200", schemas.SearchResults), [JOB_ID, QUERY_TEXT, TOP], ("404", "409")),
    ("post", "/api/jobs/{job_id}/search", "Search a finished job's dataset by a picture (the body, image/*, at "
     "most 5 MiB), best matches first", "image/*", ("200", schemas.SearchResults), [JOB_ID, TOP],
     ("404", "409", "413", "415")),
    ("get", "/api/reasons", "What each drop reason code means", None, ("200", schemas.ReasonList), [], ()),
    ("get", "/healthz", "Postgres and Redis reachability", None, ("200", schemas.Health), [], ("503",)),
]
# Any route: a Host not in CVDB_ALLOWED_HOSTS (400), the database unreachable (503); any write: a
# request from another web site (403).
EVERY_ROUTE = ("400", "503")
WRITES = ("403",)
_ERROR_TEXT = {"400": "Bad query parameter or body, or a Host header not in CVDB_ALLOWED_HOSTS.",
               "401": "Missing or wrong bearer token, or an invalid or expired signed link.",
               "403": "A state-changing request sent by a page on another web site.", "404": ERRORS["404"],
               "409": ERRORS["409"], "413": "Body over 16 KiB (a picture to search by: 5 MiB).", "415": "Body is not JSON.",
               "422": "A field is missing, of the wrong type or out of bounds.",
               "429": "Too many jobs queued or running; submit again later.",
               "503": "The database or the job queue is unreachable; retry shortly."}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(body: Any) -> dict[str, Any]:
    if body is None:
        return {}
    if isinstance(body, str):
        schema = {"type": "string", "format": "binary"} if "json" not in body else {}
        return {"content": {body: {"schema": schema}}}
    return {"content": {"application/json": {"schema": _ref(body)}}}


def _operation(route: tuple[Any, ...], secured: bool) -> dict[str, Any]:
    method, _, summary, request_model, (status, body), parameters, errors = route
    responses = {status: {"description": summary, **_content(body)}}
    common = (*EVERY_ROUTE, *(WRITES if method in ("post", "put", "patch", "delete") else ()))
    for code in sorted({*errors, *common, *(("401",) if secured else ())}):
        responses[code] = {"description": _ERROR_TEXT[code], **_content(schemas.ErrorOut)}
    operation: dict[str, Any] = {"summary": summary, "parameters": parameters, "responses": responses}
    if request_model is not None:
        operation["requestBody"] = {"required": True, **_content(request_model)}
    return operation


def document(secured: bool) -> dict[str, Any]:
    models = {r[3] for r in ROUTES if isinstance(r[3], type)} | {r[4][1] for r in ROUTES if isinstance(r[4][1], type)} | {schemas.ErrorOut}
    _, definitions = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                        ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route[1], {})[route[0]] = _operation(route, secured and route[1] != "/healthz")
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "CV Dataset Builder", "version": "1.0.0",
                 "description": "Turn one image-search query into a clean, de-duplicated, on-topic dataset."},
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {})},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
