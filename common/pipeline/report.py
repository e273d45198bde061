"""report.json: counts per stage and drop reason, every URL's outcome, thresholds, clusters, versions."""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import Settings
from common.pipeline.reasons import stage_of

if TYPE_CHECKING:
    from common.pipeline.accept import StagedImage
    from common.pipeline.cluster import Selection
    from common.pipeline.collect import Collected
    from common.pipeline.embed import ClipEmbedder

_PACKAGES = ("torch", "transformers", "sentence-transformers", "scikit-learn", "numpy", "pillow", "opencv-python", "xxhash",
             "aiohttp")
# Settings that may name a local folder rather than a hub model.
_MODEL_FIELDS = ("model", "text_model", "multilingual_text_model")


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def portable(value: object, local_folder: bool = False) -> object:
    """A path by its name only: report.json travels with the dataset, the server's layout does not.
    Absolute paths always; with `local_folder`, also a relative name that is a folder here (a model
    saved with save_pretrained, as opposed to a hub name like openai/clip-vit-base-patch32)."""
    if not isinstance(value, str) or not value:
        return value
    if os.path.isabs(os.path.expanduser(value)) or (local_folder and Path(value).expanduser().is_dir()):
        return Path(value).name
    return value


def portable_thresholds(settings: Settings) -> dict[str, object]:
    """The settings for report.json, without a server path (data_root, a local model folder, binaries)."""
    return {name: portable(value, name in _MODEL_FIELDS) for name, value in settings.thresholds().items()}


def portable_model(embedder: ClipEmbedder) -> dict[str, object]:
    return {key: portable(value, key in _MODEL_FIELDS) for key, value in embedder.describe().items()}


def stage_counts(candidates: int, dropped: Counter[str], kept: int) -> dict[str, int]:
    per_stage: Counter[str] = Counter()
    for reason, n in dropped.items():
        per_stage[stage_of(reason)] += n
    downloaded = candidates - per_stage["download"]
    passed_quality = downloaded - per_stage["quality"]
    unique = passed_quality - per_stage["duplicates"]
    return {"candidates": candidates, "downloaded": downloaded, "passed_quality": passed_quality,
            "unique": unique, "kept": kept}


def build_report(
    query: str, limit: int, settings: Settings, embedder: ClipEmbedder, collected: Collected,
    selection: Selection, kept: list[StagedImage], timings: dict[str, float],
) -> dict[str, Any]:
    outcomes = list(collected.outcomes.values())
    dropped = Counter(o.reason for o in outcomes if o.status == "dropped" and o.reason)
    return {
        "query": query,
        "prompt": settings.prompt.format(query=query),
        "limit": limit,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "status": "done" if kept else "failed",
        "counts": stage_counts(len(outcomes), dropped, len(kept)),
        "dropped": dict(dropped.most_common()),
        "select": settings.select,
        "chosen_cluster": selection.chosen.id if selection.chosen else None,
        "selection_reason": selection.reason,
        "clusters": [c.to_dict() for c in selection.clusters],
        "thresholds": portable_thresholds(settings),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "model": portable_model(embedder),
        "versions": library_versions(),
        "outcomes": [o.to_dict() for o in outcomes],
    }


def _top(dropped: dict[str, int], stage: str) -> str:
    reasons = [f"{r} x{n}" for r, n in dropped.items() if stage_of(r) == stage][:4]
    return ", ".join(reasons)


def failure_message(report: dict[str, Any]) -> str:
    """Why nothing was kept, said at the first stage that lost everything, with what to try."""
    counts, dropped = report["counts"], report["dropped"]
    thresholds = report["thresholds"]
    if counts["candidates"] == 0:
        return "no candidates: the source returned no image URLs; check the query or the URL list"
    if counts["downloaded"] == 0:
        return (f"none of the {counts['candidates']} candidates could be downloaded "
                f"({_top(dropped, 'download')}); check the URLs and the network")
    if counts["passed_quality"] == 0:
        return (f"all {counts['downloaded']} downloaded images failed the quality checks "
                f"({_top(dropped, 'quality')}); relax --min-side / --min-sharpness if they are too strict")
    return (f"no cluster: {counts['unique']} unique images passed the checks, but no group of "
            f"{thresholds['min_samples']} lies within eps {thresholds['eps']} of each other; "
            "collect more candidates (--limit, --oversample) or raise --eps")
