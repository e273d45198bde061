"""Embedding throughput of the product's `ClipEmbedder.embed_crops` at several batch sizes.

Batch sizes are timed in interleaved rounds (order alternating) and each reports its median round,
so a burst of load from another process on a shared machine hits every batch size alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bench.timing import rate, stopwatch
from common.pipeline.embed import ClipEmbedder


def batches(pool: np.ndarray, batch_size: int, count: int) -> list[np.ndarray]:
    """`count` images from a pool of prepared inputs, cycled, cut into batches of `batch_size`."""
    picks = np.arange(count) % len(pool)
    return [pool[picks[i : i + batch_size]] for i in range(0, count, batch_size)]


def timed_rate(embedder: ClipEmbedder, pool: np.ndarray, batch_size: int, images: int) -> float:
    """Images/s of `embed_crops` over `images` images (rounded up to whole batches)."""
    work = batches(pool, batch_size, max(images, batch_size))
    with stopwatch() as watch:
        for batch in work:
            embedder.embed_crops(batch)
    return rate(sum(len(b) for b in work), watch.seconds)


def embed_rates(embedder: ClipEmbedder, pool: np.ndarray, batch_sizes: Sequence[int], images: int,
                rounds: int = 4) -> dict[str, Any]:
    """Median images/s per batch size over `rounds` interleaved rounds of about images/rounds each."""
    for size in batch_sizes:
        embedder.embed_crops(batches(pool, size, size)[0])  # warm-up: allocator and kernels per shape
    samples: dict[int, list[float]] = {size: [] for size in batch_sizes}
    for index in range(rounds):
        for size in batch_sizes if index % 2 == 0 else list(reversed(batch_sizes)):
            samples[size].append(timed_rate(embedder, pool, size, max(1, images // rounds)))
    return {
        "device": str(embedder.device),
        "dtype": str(embedder.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "rounds": rounds,
        "by_batch": {
            str(size): {"batch_size": size, "images_per_s": round(statistics.median(rates), 2), "rounds": rates}
            for size, rates in samples.items()
        },
    }
