"""Decode + quality throughput: the product's `stage_download` over in-memory bytes in a thread pool."""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.timing import rate, stopwatch
from common.config import Settings
from common.pipeline.accept import Rejected, stage_download

Prepare = Callable[[Image.Image], np.ndarray]
WARM_UP = 4


def decode_rate(blobs: Sequence[bytes], settings: Settings, workers: int, prepare: Prepare | None = None) -> dict[str, Any]:
    """Images/s for decode, quality checks, re-encode, fingerprint and staging (plus CLIP `prepare` if given)."""
    digests = [hashlib.sha256(blob).hexdigest() for blob in blobs]
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as staging, \
            ThreadPoolExecutor(workers, thread_name_prefix="bench-decode") as pool:
        def one(index: int) -> str | None:
            item = stage_download(f"mem://{index}", blobs[index], "jpeg", digests[index], settings, Path(staging), prepare)
            return item.reason if isinstance(item, Rejected) else None

        list(pool.map(one, range(min(WARM_UP, len(blobs)))))  # first calls pay for lazy imports and caches
        with stopwatch() as watch:
            reasons = list(pool.map(one, range(len(blobs))))
    return {
        "images": len(blobs),
        "workers": workers,
        "with_clip_prepare": prepare is not None,
        "accepted": reasons.count(None),
        "rejected": dict(Counter(r for r in reasons if r)),
        "seconds": round(watch.seconds, 3),
        "images_per_s": rate(len(blobs), watch.seconds),
    }
