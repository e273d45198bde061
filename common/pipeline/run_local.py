"""All stages in one process: candidates -> staged images -> duplicates -> clusters -> dataset."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.config import Settings
from common.names import image_name
from common.pipeline import cluster, dedup, export
from common.pipeline.accept import Rejected, StagedImage, encode_kept
from common.pipeline.collect import Collected, collect
from common.pipeline.decode_pool import shared_pool
from common.pipeline.progress import Progress, SilentProgress
from common.pipeline.records import Candidate
from common.pipeline.report import build_report, failure_message, portable
from common.pipeline.text_encoder import query_encoder

if TYPE_CHECKING:
    from common.pipeline.embed import ClipEmbedder


CLIP_TEXT_TOWER = "clip"  # report.json's query_encoder when CLIP's own text tower scored the query


class BuildError(Exception):
    """Nothing could be kept; `report` says why, per URL."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    kept: int
    report: dict[str, Any]


def candidate_budget(limit: int, settings: Settings) -> int:
    """How many candidates to collect: filters and clustering drop many, so oversample."""
    return min(settings.max_candidates, max(limit, int(limit * settings.oversample)))


def build(
    query: str,
    candidates: Sequence[Candidate],
    limit: int,
    out_dir: Path,
    settings: Settings,
    embedder: ClipEmbedder,
    progress: Progress | None = None,
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
) -> BuildResult:
    """Run every stage; raise BuildError (after writing report.json) when nothing is kept."""
    progress = progress or SilentProgress()
    export.prepare_output(out_dir, overwrite, owner=export.LOCAL_OWNER)
    staging = export.make_staging(out_dir)
    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        urls = list(dict.fromkeys(c.url for c in candidates))
        collected = collect(urls, settings, embedder, staging, progress)
        timings["download_filter_embed"] = time.perf_counter() - started
        timings["embed_only"] = collected.embed_seconds
        return finish(query, candidates, limit, out_dir, settings, embedder, collected, progress, timings, source)
    finally:
        export.remove_staging(out_dir)


def finish(
    query: str, candidates: Sequence[Candidate], limit: int, out_dir: Path, settings: Settings,
    embedder: ClipEmbedder, collected: Collected, progress: Progress, timings: dict[str, float],
    source: dict[str, Any] | None = None,
) -> BuildResult:
    """Duplicates, clusters, selection and export over staged, embedded images.

    The local runner calls it after `collect`; the service's select task calls it after its
    fetch and embed tasks, so both paths choose and write exactly the same way.
    """
    by_url = {c.url: c for c in candidates}
    encoder = query_encoder(query, settings)
    kept, selection, query_sims = _select(query, limit, collected, settings, embedder, encoder, progress, timings)
    started = time.perf_counter()
    jpegs = _export_jpegs(kept, settings, collected, progress)
    kept = [image for image in kept if image.url in jpegs]
    report = build_report(query, limit, settings, embedder, collected, selection, kept, timings)
    report["query_encoder"] = portable(encoder, local_folder=True) if encoder else CLIP_TEXT_TOWER
    report["source"] = source or {}
    if not kept:
        export.write_failure_report(out_dir, report)
        raise BuildError(failure_message(report), report)
    rows = [_manifest_row(query, i + 1, s, jpegs[s.url], by_url[s.url], query_sims[s.url], selection)
            for i, s in enumerate(kept)]
    export.write_dataset(out_dir, [jpegs[s.url] for s in kept], rows, report)
    report["timings_s"]["export"] = round(time.perf_counter() - started, 3)
    return BuildResult(out_dir, len(kept), report)


def _export_jpegs(kept: list[StagedImage], settings: Settings, collected: Collected, progress: Progress) -> dict[str, Path]:
    """url -> the kept picture's re-encoded JPEG in staging, made in the decode workers under their
    time budget; one whose full decode fails or overruns is dropped with that reason."""
    progress.start("export", len(kept))
    results = encode_kept(kept, settings, shared_pool(settings.decode_workers), lambda: progress.advance("export"))
    progress.finish("export")
    jpegs: dict[str, Path] = {}
    for image, result in zip(kept, results, strict=True):
        if isinstance(result, Rejected):
            collected.drop(image.url, result.reason, result.detail, sha256=image.source_sha256)
        else:
            jpegs[image.url] = result
    return jpegs


def _select(
    query: str, limit: int, collected: Collected, settings: Settings, embedder: ClipEmbedder, encoder: str | None,
    progress: Progress, timings: dict[str, float],
) -> tuple[list[StagedImage], cluster.Selection, dict[str, float]]:
    """Remove duplicates, cluster, pick a cluster, keep its `limit` best matches."""
    order = sorted(range(len(collected.staged)), key=lambda i: collected.staged[i].source_sha256)
    staged = [collected.staged[i] for i in order]  # stable order: DBSCAN border points depend on it
    vectors = collected.matrix(embedder.dim)[order]
    progress.start("dedup", len(staged))
    started = time.perf_counter()
    pairs = dedup.duplicate_pairs([s.fingerprint for s in staged], vectors, settings.phash_distance,
                                  settings.pixel_confirm_correlation, settings.near_duplicate_cosine,
                                  settings.pixel_confirm_colour_difference)
    for index, (keeper, reason) in dedup.choose_keepers(pairs, [s.quality_rank for s in staged]).items():
        collected.drop(staged[index].url, reason, f"copy of {staged[keeper].url}", sha256=staged[index].source_sha256)
    unique = [i for i, s in enumerate(staged) if collected.outcomes[s.url].status != "dropped"]
    timings["dedup"] = time.perf_counter() - started
    progress.finish("dedup")

    progress.start("cluster", len(unique))
    started = time.perf_counter()
    query_vector = embedder.embed_texts([settings.prompt.format(query=query)], encoder)[0]
    sims = vectors[unique] @ query_vector if unique else np.zeros(0)
    labels = cluster.cluster_labels(vectors[unique], settings.eps, settings.min_samples)
    summaries = cluster.summarise(labels, vectors[unique], query_vector, embedder.logit_scale)
    selection = cluster.choose(summaries, settings.select, embedder.logit_scale)
    kept = _keep(unique, labels, sims, staged, selection, limit, collected)
    timings["cluster"] = time.perf_counter() - started
    progress.finish("cluster")
    return kept, selection, {staged[i].url: float(s) for i, s in zip(unique, sims)}


def _keep(
    unique: list[int], labels: np.ndarray, sims: np.ndarray, staged: list[StagedImage],
    selection: cluster.Selection, limit: int, collected: Collected,
) -> list[StagedImage]:
    chosen = selection.chosen.id if selection.chosen else None
    ranked = sorted(range(len(unique)), key=lambda k: (-sims[k], staged[unique[k]].source_sha256))
    kept: list[StagedImage] = []
    for k in ranked:
        image, label = staged[unique[k]], int(labels[k])
        outcome = collected.outcomes[image.url]
        outcome.sha256, outcome.extra["cluster"] = image.source_sha256, label
        if label == -1:
            collected.drop(image.url, "no_cluster", "not close enough to any group of similar images")
        elif label != chosen:
            collected.drop(image.url, "other_cluster", f"belongs to cluster {label}, not the chosen {chosen}")
        elif len(kept) >= limit:
            collected.drop(image.url, "over_limit", f"cluster has more than --limit {limit} images")
        else:
            outcome.status = "kept"
            kept.append(image)
    return kept


def _manifest_row(
    query: str, index: int, image: StagedImage, jpeg: Path, candidate: Candidate, query_similarity: float,
    selection: cluster.Selection,
) -> dict[str, Any]:
    return {
        "query": query,
        "file": image_name(index),
        "source": candidate.source,
        "url": image.url,
        "source_page": candidate.source_page,
        "title": candidate.title,
        "rank": candidate.rank,
        "sha256": _sha256_file(jpeg),
        "source_sha256": image.source_sha256,
        "source_format": image.image_format,
        "width": image.width,
        "height": image.height,
        "cluster": selection.chosen.id if selection.chosen else None,
        "query_similarity": round(query_similarity, 4),
        "scores": image.scores,
    }


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
