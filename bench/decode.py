"""Decode + quality throughput: the product's `stage_download` over in-memory bytes in a thread pool."""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.timing import rate, stopwatch
from common.config import Settings
from common.pipeline.accept import Rejected, stage_download
from common.pipeline.clip_input import ClipInput
from common.pipeline.decode_pool import DecodePool

WARM_UP = 4


def decode_rate(blobs: Sequence[bytes], settings: Settings, workers: int, clip: ClipInput | None = None,
                processes: bool = False) -> dict[str, Any]:
    """Images/s for decode, quality checks, re-encode, fingerprint and staging (plus CLIP's input if
    `clip`), on `workers` threads; with `processes`, each thread hands its image to a decode worker
    process, as `cvdb build` and the service run it."""
    digests = [hashlib.sha256(blob).hexdigest() for blob in blobs]
    decoders = DecodePool(workers) if processes else None
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as staging, \
            ThreadPoolExecutor(workers, thread_name_prefix="bench-decode") as pool:
        def one(index: int) -> str | None:
            item = stage_download(f"mem://{index}", blobs[index], "jpeg", digests[index], settings, Path(staging),
                                  clip, decoders)
            return item.reason if isinstance(item, Rejected) else None

        list(pool.map(one, range(min(WARM_UP, len(blobs)))))  # first calls pay for lazy imports and caches
        with stopwatch() as watch:
            reasons = list(pool.map(one, range(len(blobs))))
    if decoders is not None:
        decoders.close()
    return {
        "images": len(blobs),
        "workers": workers,
        "processes": processes,
        "with_clip_prepare": clip is not None,
        "accepted": reasons.count(None),
        "rejected": dict(Counter(r for r in reasons if r)),
        "seconds": round(watch.seconds, 3),
        "images_per_s": rate(len(blobs), watch.seconds),
    }
