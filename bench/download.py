"""Download-only throughput: the product's `fetch_all` against the fixture server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.timing import rate, stopwatch
from common.config import Settings
from common.pipeline.fetch import fetch_all


def download_rate(urls: Sequence[str], settings: Settings, delay_s: float) -> dict[str, Any]:
    """Images/s and MB/s for fetching every URL once; the network ceiling is concurrency / delay."""
    with stopwatch() as watch:
        downloads = fetch_all(urls, settings)
    ok = [d for d in downloads if d.ok]
    size = sum(len(d.data or b"") for d in ok)
    return {
        "delay_s": delay_s,
        "urls": len(urls),
        "ok": len(ok),
        "failures": dict(Counter(d.reason for d in downloads if not d.ok)),
        "seconds": round(watch.seconds, 3),
        "images_per_s": rate(len(ok), watch.seconds),
        "mb_per_s": rate(size / 2**20, watch.seconds),
        "concurrency": settings.concurrency,
        "per_host_concurrency": settings.per_host_concurrency,
        "ceiling_images_per_s": round(min(settings.concurrency, settings.per_host_concurrency) / delay_s, 1)
        if delay_s else None,
    }
