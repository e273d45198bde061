"""The end of every build, local or service: choose what to keep, export it, write the dataset.

The local runner calls `finish` after `collect`; the service's select task calls it after its
fetch and embed tasks, so both paths choose and write exactly the same way.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.config import Settings
from common.names import image_name
from common.pipeline import export, select, splits
from common.pipeline.accept import Exported, Rejected, StagedImage, encode_kept
from common.pipeline.classes import DatasetSpec
from common.pipeline.cluster import Selection
from common.pipeline.collect import Collected
from common.pipeline.decode_pool import shared_pool
from common.pipeline.examples import example_vectors
from common.pipeline.progress import Progress
from common.pipeline.records import Candidate
from common.pipeline.report import build_report, failure_message, portable, stage_counts

if TYPE_CHECKING:
    from common.pipeline.embed import ClipEmbedder

CLIP_TEXT_TOWER = "clip"  # report.json's query_encoder when CLIP's own text tower scored the query
Kept = list[tuple[int, int]]  # (row of Picked.staged, class index), class by class, best match first


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


def finish(
    spec: DatasetSpec, searches: Mapping[str, Sequence[Candidate]], out_dir: Path, settings: Settings,
    embedder: ClipEmbedder, collected: Collected, progress: Progress, timings: dict[str, float],
    source: dict[str, Any] | None = None, examples: Sequence[bytes] = (),
) -> BuildResult:
    """Duplicates, clusters, selection and export over staged, embedded images.

    `searches` maps each class's label to the candidates its search returned; `examples` are the
    --like pictures as clean JPEGs (examples.load_examples)."""
    by_url: dict[str, Candidate] = {}
    found_by: dict[str, set[int]] = {}
    for c in spec.classes:
        for candidate in searches.get(c.label, ()):
            by_url.setdefault(candidate.url, candidate)
            found_by.setdefault(candidate.url, set()).add(c.index)
    like = example_vectors(examples, embedder) if examples else None
    picked = select.pick(spec, found_by, collected, settings, embedder, progress, timings, like)
    started = time.perf_counter()
    jpegs = _export_jpegs([picked.staged[r] for ch in picked.choices for r in ch.kept], settings, collected, progress)
    for choice in picked.choices:
        choice.kept = [r for r in choice.kept if picked.staged[r].url in jpegs]
    kept: Kept = [(r, ch.spec.index) for ch in picked.choices for r in ch.kept]
    split_of = _splits(spec, picked, kept, settings)
    report = _report(spec, settings, embedder, collected, picked, found_by, split_of, timings)
    report["source"] = source or {}
    if not kept:
        export.write_failure_report(out_dir, report)
        raise BuildError(failure_message(report), report)
    files, rows = _layout(spec, picked, kept, split_of, jpegs, by_url, out_dir / export.STAGING)
    extras = {export.EMBEDDINGS: _embeddings(picked, kept)}
    if not spec.flat:
        extras[export.CLASSES] = _classes_json(report)
    export.write_dataset(out_dir, files, rows, report, extras)
    report["timings_s"]["export"] = round(time.perf_counter() - started, 3)
    return BuildResult(out_dir, len(kept), report)


def _export_jpegs(kept: list[StagedImage], settings: Settings, collected: Collected,
                  progress: Progress) -> dict[str, Exported]:
    """url -> the kept picture's re-encoded JPEG in staging, made in the decode workers under their
    time budget; one whose full decode fails or overruns is dropped with that reason."""
    progress.start("export", len(kept))
    results = encode_kept(kept, settings, shared_pool(settings.decode_workers), lambda: progress.advance("export"))
    progress.finish("export")
    jpegs: dict[str, Exported] = {}
    for image, result in zip(kept, results, strict=True):
        if isinstance(result, Rejected):
            collected.drop(image.url, result.reason, result.detail, sha256=image.source_sha256)
        else:
            jpegs[image.url] = result
    return jpegs


def _splits(spec: DatasetSpec, picked: select.Picked, kept: Kept, settings: Settings) -> dict[int, str | None]:
    """row -> train/val/test (None without --split); look-alike pictures share a split."""
    if spec.split is None:
        return {r: None for r, _ in kept}
    rows = [r for r, _ in kept]
    groups = splits.look_alike_groups([picked.staged[r].fingerprint for r in rows], picked.vectors[rows],
                                      settings.near_duplicate_cosine, settings.phash_distance)
    names = splits.assign_splits([c for _, c in kept], groups, [picked.staged[r].source_sha256 for r in rows],
                                 spec.split, spec.seed)
    return dict(zip(rows, names))


def _report(
    spec: DatasetSpec, settings: Settings, embedder: ClipEmbedder, collected: Collected, picked: select.Picked,
    found_by: Mapping[str, set[int]], split_of: Mapping[int, str | None], timings: dict[str, float],
) -> dict[str, Any]:
    kept = [picked.staged[r] for ch in picked.choices for r in ch.kept]
    first = picked.choices[0]
    overall = first.selection if len(picked.choices) == 1 else Selection(None, [], "one cluster per class: see classes")
    report = build_report(", ".join(spec.labels), spec.limit, settings, embedder, collected, overall, kept, timings)
    classes = [_class_entry(ch, settings, collected, found_by, split_of) for ch in picked.choices]
    report["query_encoder"] = classes[0]["query_encoder"] if spec.flat else None
    report["queries"], report["classes"] = list(spec.labels), classes
    if len(classes) > 1:
        report["prompt"] = None  # one per class, in `classes`
    report["dataset"] = {"layout": "flat" if spec.flat else "classes", "format": spec.format,
                         "split": list(spec.split) if spec.split else None, "seed": spec.seed, "balance": spec.balance}
    report["steering"] = {"like": [portable(ref) for ref in spec.like], "exclude": list(spec.exclude)}
    report["embeddings"] = {"file": export.EMBEDDINGS, "dtype": "float16", "dim": int(picked.vectors.shape[1]),
                            "model": report["model"]["model"], "rows": "manifest order"}
    report["warnings"] = [f"class {c['label']!r} kept no pictures: {c['selection_reason']}"
                          for c in classes if not c["counts"]["kept"] and kept]
    return report


def _class_entry(
    choice: select.ClassChoice, settings: Settings, collected: Collected, found_by: Mapping[str, set[int]],
    split_of: Mapping[int, str | None],
) -> dict[str, Any]:
    urls = [u for u, cs in found_by.items() if choice.spec.index in cs]
    outcomes = [collected.outcomes[u] for u in urls if u in collected.outcomes]
    dropped = Counter(o.reason for o in outcomes if o.status == "dropped" and o.reason)
    chosen = choice.selection.chosen
    return {
        "index": choice.spec.index, "label": choice.spec.label, "folder": choice.spec.folder,
        "prompt": settings.prompt.format(query=choice.spec.label),
        "query_encoder": portable(choice.encoder, local_folder=True) if choice.encoder else CLIP_TEXT_TOWER,
        "chosen_cluster": chosen.id if chosen else None, "selection_reason": choice.selection.reason,
        "clusters": [c.to_dict() for c in choice.selection.clusters],
        "counts": stage_counts(len(outcomes), dropped, len(choice.kept)),
        "splits": dict(Counter(split_of[r] for r in choice.kept if split_of.get(r))),
    }


def _embeddings(picked: select.Picked, kept: Kept) -> bytes:
    """embeddings.npy: the kept pictures' unit vectors as float16, one row per manifest row."""
    buffer = io.BytesIO()
    np.save(buffer, np.stack([picked.vectors[r] for r, _ in kept]).astype(np.float16), allow_pickle=False)
    return buffer.getvalue()


def _classes_json(report: dict[str, Any]) -> bytes:
    entries = [{"index": c["index"], "label": c["label"], "folder": c["folder"], "kept": c["counts"]["kept"],
                "splits": c["splits"]} for c in report["classes"]]
    return json.dumps(entries, ensure_ascii=False, indent=2).encode()


def _layout(
    spec: DatasetSpec, picked: select.Picked, kept: Kept, split_of: Mapping[int, str | None],
    jpegs: Mapping[str, Exported], by_url: Mapping[str, Candidate], staging: Path,
) -> tuple[list[tuple[Path, str]], list[dict[str, Any]]]:
    """(staged file, its path in the dataset) pairs and the manifest rows, in the dataset's format."""
    numbers: Counter[tuple[str | None, int]] = Counter()
    files: list[tuple[Path, str]] = []
    rows: list[dict[str, Any]] = []
    for r, c in kept:
        image, choice = picked.staged[r], picked.choices[c]
        numbers[(split_of[r], c)] += 1
        name = image_name(numbers[(split_of[r], c)])
        if not spec.flat:
            name = "/".join(p for p in (split_of[r], choice.spec.folder, name) if p)
        jpeg = jpegs[image.url]
        row = _manifest_row(choice, name, image, jpeg.sha256, by_url[image.url], float(picked.sims[r, c]))
        if not spec.flat:
            row["label"], row["split"] = choice.spec.label, split_of[r]
        files.append((jpeg.path, name))
        rows.append(row)
    if spec.format == "imagefolder":
        return files, rows
    return _formatted(spec, files, rows, staging / f"format-{spec.format}"), rows


def _formatted(spec: DatasetSpec, files: list[tuple[Path, str]], rows: list[dict[str, Any]], dest: Path) -> list[tuple[Path, str]]:
    """Write the samples as webdataset shards or a Hugging Face folder; the rows learn where each went."""
    from common.pipeline import formats

    dest.mkdir()
    index = {c.label: c.index for c in spec.classes}
    samples = [formats.Sample(jpeg, row["label"], index[row["label"]], row["split"],
                              name.removesuffix(".jpg").replace("/", "_"),
                              {k: v for k, v in row.items() if k != "file"})
               for (jpeg, name), row in zip(files, rows)]
    writer = formats.write_webdataset if spec.format == "webdataset" else formats.write_hf
    for row, where in zip(rows, writer(dest, samples, list(spec.labels))):
        row.pop("file")
        row.update(where)
    return [(path, path.relative_to(dest).as_posix()) for path in sorted(dest.rglob("*")) if path.is_file()]


def _manifest_row(
    choice: select.ClassChoice, file: str, image: StagedImage, sha256: str, candidate: Candidate, query_similarity: float,
) -> dict[str, Any]:
    return {
        "query": choice.spec.label,
        "file": file,
        "source": candidate.source,
        "url": image.url,
        "source_page": candidate.source_page,
        "title": candidate.title,
        "rank": candidate.rank,
        "sha256": sha256,
        "source_sha256": image.source_sha256,
        "source_format": image.image_format,
        "width": image.width,
        "height": image.height,
        "cluster": choice.selection.chosen.id if choice.selection.chosen else None,
        "query_similarity": round(query_similarity, 4),
        "scores": image.scores,
    }
