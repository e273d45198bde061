"""All stages in one process: candidates -> staged images -> duplicates -> clusters -> dataset."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import Settings
from common.pipeline import export
from common.pipeline.classes import DatasetSpec
from common.pipeline.collect import collect
from common.pipeline.finish import BuildError, BuildResult, finish
from common.pipeline.progress import Progress, SilentProgress
from common.pipeline.records import Candidate

if TYPE_CHECKING:
    from common.pipeline.embed import ClipEmbedder

__all__ = ["BuildError", "BuildResult", "build", "candidate_budget"]


def candidate_budget(limit: int, settings: Settings) -> int:
    """How many candidates to collect per class: filters and clustering drop many, so oversample."""
    return min(settings.max_candidates, max(limit, int(limit * settings.oversample)))


def build(
    spec: DatasetSpec,
    searches: Mapping[str, Sequence[Candidate]],
    out_dir: Path,
    settings: Settings,
    embedder: ClipEmbedder,
    progress: Progress | None = None,
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
    examples: Sequence[bytes] = (),
) -> BuildResult:
    """Run every stage; raise BuildError (after writing report.json) when nothing is kept."""
    progress = progress or SilentProgress()
    export.prepare_output(out_dir, overwrite, owner=export.LOCAL_OWNER)
    staging = export.make_staging(out_dir)
    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        urls = list(dict.fromkeys(c.url for found in searches.values() for c in found))
        collected = collect(urls, settings, embedder, staging, progress)
        timings["download_filter_embed"] = time.perf_counter() - started
        timings["embed_only"] = collected.embed_seconds
        return finish(spec, searches, out_dir, settings, embedder, collected, progress, timings, source, examples)
    finally:
        export.remove_staging(out_dir)
