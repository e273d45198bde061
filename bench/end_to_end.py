"""The overlapped pass as the product runs it: `collect()` = download + decode/quality + embed."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.timing import rate, stopwatch
from common.config import Settings
from common.pipeline.collect import collect
from common.pipeline.embed import ClipEmbedder
from common.pipeline.progress import SilentProgress


def collect_rate(urls: Sequence[str], settings: Settings, embedder: ClipEmbedder) -> dict[str, Any]:
    """Embedded images/s over the whole `collect()` call, and how much of it was spent embedding."""
    with tempfile.TemporaryDirectory(prefix="bench-collect-") as staging, stopwatch() as watch:
        result = collect(list(urls), settings, embedder, Path(staging), SilentProgress())
    embedded = len(result.staged)
    drops = Counter(o.reason for o in result.outcomes.values() if o.status == "dropped")
    return {
        "candidates": len(urls),
        "embedded": embedded,
        "dropped": dict(drops),
        "batch_size": settings.batch_size,
        "decode_workers": settings.decode_workers,
        "seconds": round(watch.seconds, 3),
        "images_per_s": rate(embedded, watch.seconds),
        "candidates_per_s": rate(len(urls), watch.seconds),
        "embed_seconds": round(result.embed_seconds, 3),
        "embed_images_per_s_inside": rate(embedded, result.embed_seconds),
        "embed_busy_share": round(result.embed_seconds / watch.seconds, 3) if watch.seconds else None,
    }
