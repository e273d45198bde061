"""DBSCAN over CLIP embeddings and the rule that picks the one cluster to keep."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ClusterSummary:
    id: int
    size: int
    query_similarity: float  # mean cosine of the members with the query's text embedding
    cohesion: float  # mean cosine of the members with their centroid
    score: float  # the rank under the chosen selection mode

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Selection:
    chosen: ClusterSummary | None
    clusters: list[ClusterSummary]
    reason: str


def cluster_labels(embeddings: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN with cosine distance; -1 is noise. Callers pass rows in a stable order."""
    if len(embeddings) == 0:
        return np.zeros(0, dtype=int)
    from sklearn.cluster import DBSCAN  # seconds to import: not before the first download

    return DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit_predict(embeddings)


def summarise(labels: np.ndarray, embeddings: np.ndarray, query: np.ndarray, logit_scale: float) -> list[ClusterSummary]:
    """One summary per cluster. The query score is log(size) + logit_scale * similarity:
    P(cluster | query) on CLIP's own temperature, so a 0.1 similarity gap (real CLIP's
    match vs. non-match) outweighs any plausible size difference, while near-equal
    similarities fall back to size."""
    summaries = []
    for cluster_id in sorted(set(labels.tolist()) - {-1}):
        members = embeddings[labels == cluster_id]
        centroid = members.mean(axis=0)
        centroid /= np.linalg.norm(centroid) or 1.0
        similarity = float((members @ query).mean())
        score = math.log(len(members)) + logit_scale * similarity
        summaries.append(
            ClusterSummary(
                id=int(cluster_id),
                size=len(members),
                query_similarity=round(similarity, 4),
                cohesion=round(float((members @ centroid).mean()), 4),
                score=round(score, 4),
            )
        )
    return summaries


def choose(clusters: list[ClusterSummary], mode: str, logit_scale: float) -> Selection:
    """`largest` is the original tool's rule; `query` picks the cluster the query text matches best."""
    if not clusters:
        return Selection(None, clusters, "no cluster: too few images are similar enough to each other")
    if mode == "largest":
        chosen = max(clusters, key=lambda c: (c.size, c.query_similarity, -c.id))
        return Selection(chosen, clusters, f"largest cluster ({chosen.size} images)")
    chosen = max(clusters, key=lambda c: (c.score, c.size, -c.id))
    biggest = max(clusters, key=lambda c: (c.size, -c.id))
    reason = (
        f"best match for the query: similarity {chosen.query_similarity:.3f} with {chosen.size} images "
        f"(score log(size) + {logit_scale:.1f} x similarity = {chosen.score:.2f})"
    )
    if biggest.id != chosen.id:
        reason += (
            f"; the larger cluster {biggest.id} ({biggest.size} images, similarity "
            f"{biggest.query_similarity:.3f}, score {biggest.score:.2f}) matches the query less"
        )
    return Selection(chosen, clusters, reason)
