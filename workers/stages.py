"""The body of each task: the pipeline's stages run over a job's rows and staging folder.

search -> fetch chunks (in parallel) -> fan-in -> embed -> select + export. Each function
returns what should be enqueued next; the Celery tasks in `workers.tasks` do the enqueueing.
Work already done is skipped, so a redelivered task repeats nothing and duplicates nothing.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Select, select

from common import lifecycle
from common.db import db
from common.lifecycle import Stage
from common.models import Candidate as CandidateRow
from common.models import Job
from common.pipeline import export, staging
from common.pipeline.accept import Rejected, StagedImage
from common.pipeline.clip_input import ClipInput, ModelLoadError, read_clip_input
from common.pipeline.collect import Collected, rejection_extra, stage_stream
from common.pipeline.embed import ClipEmbedder
from common.pipeline.examples import ExampleError, load_examples, load_picture
from common.pipeline.find import (
    FindError,
    check_model,
    load_index,
    rank,
    search_vectors,
)
from common.pipeline.finish import BuildError, finish
from common.pipeline.progress import Cancelled, SilentProgress
from common.pipeline.records import Candidate, Outcome
from common.pipeline.run_local import candidate_budget
from common.pipeline.sources import SearchResult, SourceError, search_classes
from common.pipeline.sources.urls import UrlsSource
from common.pipeline.text_encoder import query_encoder
from workers import jobstate
from workers.jobstate import JobError, job_settings

__all__ = ["JobError", "run_embed", "run_fetch_chunk", "run_find", "run_search", "run_select"]


class JobProgress(SilentProgress):
    """Progress for stage code running in a task: counts come from the candidate rows; the
    cancel flag is read at most twice a second."""

    def __init__(self, job_id: str, every_s: float = 0.5) -> None:
        self.job_id, self.every_s = job_id, every_s
        self._checked, self._cancelled = 0.0, False

    def log(self, message: str) -> None:
        jobstate.log_line(self.job_id, message)

    def cancelled(self) -> bool:
        if not self._cancelled and time.monotonic() - self._checked >= self.every_s:
            self._checked = time.monotonic()
            self._cancelled = jobstate.cancel_requested(self.job_id)
            db.session.commit()  # end the read transaction: the next read sees new commits
        return self._cancelled


def _find(job: Job) -> dict[str, SearchResult]:
    """One search per class; the job's own URL list (lines may be label<TAB>URL) for source urls."""
    settings = job_settings(job)
    budget = candidate_budget(job.request_limit, settings)
    urls = (job.options or {}).get("urls")
    listed = UrlsSource("-", stdin=io.StringIO("\n".join(urls or []))) if job.source == "urls" else None
    return search_classes(job.labels, budget, settings, source=job.source, listed=listed)


def run_search(job_id: str) -> list[int]:
    """Find candidates, store one row per URL in chunks; returns the chunks to fetch."""
    if jobstate.active(job_id) is None:
        return []
    job = lifecycle.start(job_id)
    if job is None:
        return []
    if job.stage == Stage.FETCH:  # redelivered after the rows were stored: resend what is left
        return unfetched_chunks(job_id)
    if job.stage != Stage.SEARCH:
        return []
    settings = job_settings(job)
    jobstate.log_line(job_id, f"searching {job.source} for {', '.join(map(repr, job.labels))}")
    db.session.commit()
    try:
        for label in job.labels:  # a query no encoder can score fails now, not after the downloads
            query_encoder(label, settings)
        export.prepare_output(jobstate.output_dir(job, settings), overwrite=False, owner=job.id)
        _save_examples(jobstate.staging_dir(job, settings), load_examples(jobstate.dataset_spec(job).like, settings))
        found = _find(job)
    except (SourceError, export.OutputError, ModelLoadError, ExampleError) as exc:
        raise JobError(str(exc)) from exc
    for label, result in found.items():
        if not result.candidates:
            raise JobError(f"{result.served_by} found no image URLs for {label!r}; try another query or source")
    return _store_candidates(job_id, found, settings.fetch_chunk_size)


_EXAMPLE = "example-{:02d}.jpg"  # the --like pictures, clean JPEGs in the job's staging folder


def _save_examples(folder: Path, examples: list[bytes]) -> None:
    for i, data in enumerate(examples):
        export.atomic_write(folder / _EXAMPLE.format(i), data)


def _load_examples(folder: Path, count: int) -> list[bytes]:
    paths = [folder / _EXAMPLE.format(i) for i in range(count)]
    if not all(export.regular_file(p) for p in paths):
        raise JobError("the example pictures saved at search time are gone; submit the job again")
    return [p.read_bytes() for p in paths]


# Candidate fields that have their own column; the rest is kept as the row's `meta`.
_ROW_FIELDS = ("url", "source", "rank")


def _store_candidates(job_id: str, found: dict[str, SearchResult], chunk_size: int) -> list[int]:
    """One row per URL, with the classes whose search found it (`meta.labels`)."""
    job = jobstate.locked(job_id)
    if job is None or job.stage != Stage.SEARCH:
        db.session.rollback()
        return []
    unique: dict[str, tuple[Candidate, list[str]]] = {}
    for label, result in found.items():
        for c in result.candidates:
            unique.setdefault(c.url, (c, []))[1].append(label)
    for index, (c, labels) in enumerate(unique.values()):
        meta = {**{k: v for k, v in c.to_dict().items() if k not in _ROW_FIELDS}, "labels": labels}
        db.session.add(CandidateRow(job_id=job_id, url=c.url, rank=c.rank, source=c.source, meta=meta,
                                    chunk=index // chunk_size))
    chunks = list(range((len(unique) + chunk_size - 1) // chunk_size))
    job.stage, job.fetch_chunks_total = Stage.FETCH, len(chunks)
    infos = {label: {"served_by": r.served_by, "attempts": r.attempts} for label, r in found.items()}
    job.options = {**(job.options or {}), "source_info": next(iter(infos.values())) if len(infos) == 1 else {"classes": infos}}
    db.session.commit()
    served = ", ".join(dict.fromkeys(r.served_by for r in found.values()))
    jobstate.log_line(job_id, f"{len(unique)} candidates from {served}; fetching in {len(chunks)} chunks")
    db.session.commit()
    return chunks


def unfetched_chunks(job_id: str) -> list[int]:
    query = select(CandidateRow.chunk).where(CandidateRow.job_id == job_id, ~CandidateRow.fetched).distinct()
    return sorted(db.session.scalars(query).all())


# CLIP's preprocessing numbers, read once per worker process and model.
_clip_input: Callable[[str], ClipInput] = functools.cache(read_clip_input)


def start_fetch_chunk(job_id: str, chunk: int) -> bool:
    """Count one start of this chunk (a delivery of its task); False when it should not run."""
    job = jobstate.active(job_id)
    return job is not None and job.stage == Stage.FETCH and _count_attempt(job_id, chunk)


def run_fetch_chunk(job_id: str, chunk: int, worker: str = "") -> bool:
    """Download, check and stage one chunk's URLs; True when this chunk completed the fetch."""
    job = jobstate.active(job_id)
    if job is None or job.stage != Stage.FETCH:
        return fan_in(job_id) if job is not None else False
    settings = job_settings(job)
    folder = jobstate.staging_dir(job, settings)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {r.url: r for r in db.session.scalars(_chunk_rows(job_id, chunk)).all()}
    clip = _clip_input(settings.model)
    accepted = 0
    for item in stage_stream(list(rows), settings, folder, clip, JobProgress(job_id)):
        accepted += _record(rows[item.url], item)
        jobstate.heartbeat(job_id)
        db.session.commit()
    jobstate.log_line(job_id, f"chunk {chunk}: {accepted} of {len(rows)} URLs accepted (worker {worker or '?'})")
    db.session.commit()
    return fan_in(job_id)


def _chunk_rows(job_id: str, chunk: int) -> Select[CandidateRow]:
    return (select(CandidateRow).where(CandidateRow.job_id == job_id, CandidateRow.chunk == chunk,
                                       ~CandidateRow.fetched).order_by(CandidateRow.rank))


def _count_attempt(job_id: str, chunk: int) -> bool:
    """Count a start of this chunk; past the limit its URLs are dropped so the job can go on."""
    job = jobstate.locked(job_id)
    assert job is not None
    attempts = dict(job.chunk_attempts or {})
    attempts[str(chunk)] = attempts.get(str(chunk), 0) + 1
    job.chunk_attempts = attempts
    limit = job_settings(job).max_chunk_attempts
    db.session.commit()
    if attempts[str(chunk)] <= limit:
        return True
    for row in db.session.scalars(_chunk_rows(job_id, chunk)).all():
        row.status, row.reason, row.fetched = "dropped", "worker_lost", True
        row.detail = f"the worker died {limit} times while fetching this URL's chunk"
    jobstate.log_line(job_id, f"chunk {chunk} given up after {limit} attempts that killed their worker")
    db.session.commit()
    return False


def _record(row: CandidateRow, item: StagedImage | Rejected) -> bool:
    """Store one URL's outcome; True when its image was staged."""
    row.fetched = True
    if isinstance(item, Rejected):
        row.status, row.reason, row.detail = "dropped", item.reason, item.detail
        row.sha256, row.extra = item.sha256, rejection_extra(item)
        return False
    staging.save(item)
    row.sha256 = item.source_sha256
    return True


def fan_in(job_id: str) -> bool:
    """The chunk that leaves no URL unfetched moves the job to embed, exactly once."""
    job = jobstate.locked(job_id)
    if job is None:
        db.session.rollback()
        return False
    left = unfetched_chunks(job_id)
    job.fetch_chunks_done = job.fetch_chunks_total - len(left)
    db.session.commit()
    return not left and lifecycle.advance(job_id, Stage.FETCH, Stage.EMBED, "all chunks fetched; embedding")


def _staged_rows(job_id: str) -> list[CandidateRow]:
    query = (select(CandidateRow).where(CandidateRow.job_id == job_id, CandidateRow.fetched,
                                        CandidateRow.status == "pending").order_by(CandidateRow.rank))
    return list(db.session.scalars(query).all())


def run_embed(job_id: str, embedder: ClipEmbedder) -> bool:
    """Embed every staged image not yet embedded, in batches; True when select should run."""
    job = jobstate.active(job_id)
    if job is None or job.stage != Stage.EMBED:
        return job is not None and job.stage == Stage.SELECT
    settings = job_settings(job)
    folder = jobstate.staging_dir(job, settings)
    todo = list(dict.fromkeys(r.sha256 for r in _staged_rows(job_id) if r.sha256))
    todo = [sha for sha in todo if not staging.has_vector(folder, sha)]
    progress, started = JobProgress(job_id), time.perf_counter()
    size = settings.gpu_batch_size or (256 if embedder.device.type == "cuda" else settings.batch_size)
    for start in range(0, len(todo), size):
        if progress.cancelled():
            raise Cancelled("cancelled while embedding")
        batch = todo[start : start + size]
        for sha, vector in zip(batch, embedder.embed_crops(np.stack(_crops(folder, batch)))):
            staging.save_vector(folder, sha, vector)
        jobstate.heartbeat(job_id)
        db.session.commit()
    seconds = time.perf_counter() - started
    return lifecycle.advance(job_id, Stage.EMBED, Stage.SELECT,
                             f"embedded {len(todo)} images in {seconds:.1f} s (batches of {size}, "
                             f"{embedder.describe()['device']}); removing copies, clustering, saving")


def _crops(folder: Path, batch: list[str]) -> list[np.ndarray]:
    crops = [staging.load(folder, sha, "", with_crop=True).clip_crop for sha in batch]
    if any(crop is None for crop in crops):
        raise JobError("this job's pictures were staged by an older version of the service, which kept no CLIP "
                       "input crop; submit the job again")
    return crops  # type: ignore[return-value]


def run_select(job_id: str, embedder: ClipEmbedder) -> None:
    """Duplicates, clustering, selection and export, exactly as `cvdb build` does them."""
    job = jobstate.active(job_id)
    if job is None or job.stage != Stage.SELECT:
        return
    settings = job_settings(job)
    out_dir = jobstate.output_dir(job, settings)
    rows = list(db.session.scalars(select(CandidateRow).where(CandidateRow.job_id == job_id)
                                   .order_by(CandidateRow.rank, CandidateRow.id)).all())
    if (out_dir / export.MANIFEST).is_file():  # redelivered after the export had completed
        report = json.loads((out_dir / export.REPORT).read_text(encoding="utf-8"))
        outcomes = [Outcome(o["url"], o.get("status", "dropped"), o.get("reason"), o.get("detail"), o.get("sha256"),
                            o.get("extra", {})) for o in report["outcomes"]]
        _store_outcomes(job_id, rows, outcomes, report, None, job.out_dir)
        return
    collected = _collected(rows, out_dir / export.STAGING, embedder.dim)
    spec = jobstate.dataset_spec(job)
    searches: dict[str, list[Candidate]] = {label: [] for label in spec.labels}
    for r in rows:
        for label in (r.meta or {}).get("labels") or spec.labels[:1]:
            searches[label].append(Candidate(url=r.url, source=r.source, rank=r.rank, **_meta(r)))
    info = (job.options or {}).get("source_info")
    try:
        examples = _load_examples(out_dir / export.STAGING, len(spec.like))
        result = finish(spec, searches, out_dir, settings, embedder, collected, JobProgress(job_id), {}, info, examples)
        report, error = result.report, None
    except BuildError as exc:
        report, error = exc.report, str(exc)
    finally:
        export.remove_staging(out_dir)
    _store_outcomes(job_id, rows, collected.outcomes.values(), report, error, job.out_dir)


def _meta(row: CandidateRow) -> dict[str, Any]:
    """The search metadata stored with the row, as Candidate fields."""
    return {k: v for k, v in (row.meta or {}).items() if k in Candidate.__dataclass_fields__ and k not in _ROW_FIELDS}


def _collected(rows: list[CandidateRow], folder: Path, dim: int) -> Collected:
    """What `collect` would have returned, rebuilt from the rows and staged files."""
    collected = Collected(outcomes={r.url: Outcome(r.url) for r in rows})
    first_with: dict[str, str] = {}
    vectors: list[np.ndarray] = []
    for row in rows:
        if row.status == "dropped":
            collected.drop(row.url, row.reason or "dropped", row.detail or "", **(row.extra or {}))
        elif row.sha256 in first_with:  # the same file reached through two URLs (two chunks)
            collected.drop(row.url, "duplicate_bytes", f"same file as {first_with[row.sha256]}", sha256=row.sha256)
        elif row.fetched and row.sha256:
            first_with[row.sha256] = row.url
            collected.staged.append(staging.load(folder, row.sha256, row.url))
            vectors.append(staging.load_vector(folder, row.sha256))
    collected.embeddings = [np.stack(vectors)] if vectors else [np.zeros((0, dim), np.float32)]
    return collected


def _store_outcomes(job_id: str, rows: list[CandidateRow], outcomes: Iterable[Outcome],
                    report: dict[str, Any], error: str | None, output: str) -> None:
    """Every URL's outcome on its row, then the job ends done (or failed) with the summary."""
    by_url = {r.url: r for r in rows}
    for outcome in outcomes:
        row = by_url[outcome.url]
        row.status = outcome.status if outcome.status in ("kept", "dropped") else "dropped"
        row.reason, row.detail = outcome.reason, outcome.detail
        row.extra = outcome.extra
    counts: dict[str, Any] = dict(report.get("counts", {}))
    summary = {"count": int(counts.get("kept", 0)), "stage_counts": counts,
               "drop_counts": dict(report.get("dropped", {})),
               "result": {k: report.get(k) for k in ("select", "chosen_cluster", "selection_reason", "clusters", "model",
                                                     "classes", "dataset", "warnings", "steering")}}
    lifecycle.finish(job_id, error, summary, output)


def run_find(job_id: str, query: dict[str, str], top: int, embedder: ClipEmbedder) -> dict[str, Any]:
    """Rank a finished job's pictures against `query` ({"text": ...} or {"picture": base64 bytes});
    {"hits": [...]} best first, or {"error": sentence}."""
    job = db.session.get(Job, job_id)
    if job is None or job.status != "done":
        return {"error": f"job {job_id} has no finished dataset to search"}
    settings = job_settings(job)
    try:
        index = load_index(jobstate.output_dir(job, settings))
        check_model(index, settings.model)
        pictures = [load_picture(base64.b64decode(query["picture"]), settings)] if "picture" in query else []
        vector = search_vectors(embedder, settings, query.get("text"), pictures)
    except (FindError, ExampleError, ModelLoadError, JobError) as exc:
        return {"error": str(exc)}
    return {"hits": rank(index, vector, top)}
