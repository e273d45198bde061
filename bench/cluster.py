"""Clustering throughput: the product's `cluster_labels` (DBSCAN, cosine) on planted unit vectors."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.timing import rate, stopwatch
from common.pipeline.cluster import cluster_labels

PLANTED_SHARE = 0.6  # the rest is uniform noise on the sphere
SPREAD = 0.25  # noise norm around a centre: members sit ~0.03 cosine distance from it, well inside eps


def planted_vectors(count: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors: PLANTED_SHARE of them in `clusters` tight groups, the rest scattered."""
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    planted = int(count * PLANTED_SHARE)
    members = centres[rng.integers(0, clusters, planted)] + rng.normal(scale=SPREAD / np.sqrt(dim), size=(planted, dim))
    vectors = np.concatenate([members, rng.normal(size=(count - planted, dim))]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors[rng.permutation(count)]


def cluster_rate(count: int, eps: float, min_samples: int, dim: int = 512, clusters: int = 10, seed: int = 0) -> dict[str, Any]:
    """Seconds and points/s for one `cluster_labels` call, with what it found."""
    vectors = planted_vectors(count, dim, clusters, np.random.default_rng(seed))
    with stopwatch() as watch:
        labels = cluster_labels(vectors, eps, min_samples)
    return {
        "points": count,
        "dim": dim,
        "planted_clusters": clusters,
        "found_clusters": len(set(labels.tolist()) - {-1}),
        "noise_points": int((labels == -1).sum()),
        "seconds": round(watch.seconds, 3),
        "points_per_s": rate(count, watch.seconds),
    }
