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
    like_similarity: float | None = None  # mean cosine with the example pictures (--like), if any
    excluded_by: str | None = None  # the negative prompt (--exclude) it matches better than the query

    def to_dict(self) -> dict[str, float | int | str]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Selection:
    chosen: ClusterSummary | None
    clusters: list[ClusterSummary]
    reason: str


def cluster_labels(embeddings: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN with cosine distance; -1 is noise. Callers pass rows in a stable order."""
    if len(embeddings) == 0:
        return np.zeros(0, dtype=int)
    from sklearn.cluster import (
        DBSCAN,  # seconds to import: not before the first download
    )

    return DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit_predict(embeddings)


def summarise(
    labels: np.ndarray, embeddings: np.ndarray, query: np.ndarray, logit_scale: float, like: np.ndarray | None = None,
) -> list[ClusterSummary]:
    """One summary per cluster. The query score is log(size) + logit_scale * similarity:
    P(cluster | query) on CLIP's own temperature, so a 0.1 similarity gap (real CLIP's
    match vs. non-match) outweighs any plausible size difference, while near-equal
    similarities fall back to size. Example pictures (`like`, unit vectors) add
    logit_scale * their mean cosine with the members: image to image, on the same scale."""
    summaries = []
    for cluster_id in sorted(set(labels.tolist()) - {-1}):
        members = embeddings[labels == cluster_id]
        centroid = members.mean(axis=0)
        centroid /= np.linalg.norm(centroid) or 1.0
        similarity = float((members @ query).mean())
        like_similarity = float((members @ like.T).mean()) if like is not None and len(like) else None
        score = math.log(len(members)) + logit_scale * (similarity + (like_similarity or 0.0))
        summaries.append(
            ClusterSummary(
                id=int(cluster_id),
                size=len(members),
                query_similarity=round(similarity, 4),
                cohesion=round(float((members @ centroid).mean()), 4),
                score=round(score, 4),
                like_similarity=None if like_similarity is None else round(like_similarity, 4),
            )
        )
    return summaries


def choose(clusters: list[ClusterSummary], mode: str, logit_scale: float) -> Selection:
    """`largest` is the original tool's rule; `query` picks the cluster the query text matches best."""
    if not clusters:
        return Selection(None, clusters, "no cluster: too few images are similar enough to each other")
    allowed = [c for c in clusters if c.excluded_by is None]
    if not allowed:
        return Selection(None, clusters, "no cluster: every group matches a negative prompt (--exclude) better than "
                                         "the query")
    excluded = "".join(f"; cluster {c.id} ({c.size} images) matches the negative prompt {c.excluded_by!r} better "
                       "than the query" for c in clusters if c.excluded_by is not None)
    if mode == "largest":
        chosen = max(allowed, key=lambda c: (c.size, c.query_similarity, -c.id))
        return Selection(chosen, clusters, f"largest cluster ({chosen.size} images){excluded}")
    chosen = max(allowed, key=lambda c: (c.score, c.size, -c.id))
    biggest = max(allowed, key=lambda c: (c.size, -c.id))
    reason = (
        f"best match for the query: similarity {chosen.query_similarity:.3f} with {chosen.size} images"
        + (f", example similarity {chosen.like_similarity:.3f}" if chosen.like_similarity is not None else "")
        + f" (score log(size) + {logit_scale:.1f} x similarity"
        + (" + the same x example similarity" if chosen.like_similarity is not None else "")
        + f" = {chosen.score:.2f})"
    )
    if biggest.id != chosen.id:
        reason += (
            f"; the larger cluster {biggest.id} ({biggest.size} images, similarity "
            f"{biggest.query_similarity:.3f}, score {biggest.score:.2f}) matches the query less"
        )
    return Selection(chosen, clusters, reason + excluded)
