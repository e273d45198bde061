"""Every drop reason code with its stage and a sentence: what the API and the dashboard explain."""

from __future__ import annotations

from common.pipeline import dedup, fetch, quality
from common.pipeline.accept import DECODE_REASONS
from common.pipeline.report import stage_of

# Reasons given after the per-image checks: by the selection, or by the service for a lost chunk.
OTHER_REASONS = {
    "no_cluster": "not close enough to any group of similar images",
    "other_cluster": "belongs to a group other than the one kept",
    "over_limit": "the kept group has more images than asked for; the best matches were kept",
    "worker_lost": "the worker fetching it died repeatedly; the URL was given up",
}


def catalogue() -> dict[str, dict[str, str]]:
    """code -> {stage, description}; `http_<status>` stands for every HTTP error status."""
    texts = {**fetch.REASONS, **DECODE_REASONS, **quality.REASONS, **dedup.REASONS, **OTHER_REASONS}
    stages = {code: stage_of("http_404" if code == "http_<status>" else code) for code in texts}
    return {code: {"stage": stages[code], "description": text} for code, text in texts.items()}
