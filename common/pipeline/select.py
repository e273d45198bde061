"""What a dataset keeps: copies removed, one cluster per class, contested pictures settled, limits.

Plain data in (staged images, their embeddings, which class's search found each), decisions out:
every unique picture's outcome is recorded on `collected`, and the kept ones come back per class.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from common.config import Settings
from common.pipeline import classes, cluster, dedup
from common.pipeline.accept import StagedImage
from common.pipeline.classes import ClassSpec, Contest, DatasetSpec
from common.pipeline.collect import Collected
from common.pipeline.progress import Progress
from common.pipeline.text_encoder import prompt_vectors, query_encoder

if TYPE_CHECKING:
    from common.pipeline.embed import ClipEmbedder


@dataclass
class ClassChoice:
    """One class's cluster choice and what it keeps (rows of `Picked.staged`, best match first)."""

    spec: ClassSpec
    encoder: str | None
    selection: cluster.Selection
    labels: dict[int, int] = field(default_factory=dict)  # row -> DBSCAN label, for this class's members
    kept: list[int] = field(default_factory=list)

    def holds(self, row: int) -> bool:
        chosen = self.selection.chosen
        return chosen is not None and self.labels.get(row) == chosen.id


@dataclass
class Picked:
    staged: list[StagedImage]  # in source sha256 order: DBSCAN's border points depend on the order
    vectors: np.ndarray
    sims: np.ndarray  # row x class: cosine with the class's prompt
    choices: list[ClassChoice]
    contests: dict[int, Contest]
    excluded: dict[int, str] = field(default_factory=dict)  # row -> why a negative prompt removed it


def pick(
    spec: DatasetSpec, found_by: Mapping[str, set[int]], collected: Collected, settings: Settings,
    embedder: ClipEmbedder, progress: Progress, timings: dict[str, float], like: np.ndarray | None = None,
) -> Picked:
    """Remove copies, cluster each class's pictures, settle contested ones, keep `limit` per class.

    `like` (example pictures' unit vectors) also weighs in each class's cluster choice; clusters and
    then single pictures that match a negative prompt (`spec.exclude`) better than the query go."""
    order = sorted(range(len(collected.staged)), key=lambda i: collected.staged[i].source_sha256)
    staged = [collected.staged[i] for i in order]
    vectors = collected.matrix(embedder.dim)[order]
    homes = _homes(staged, found_by, collected)
    unique = _remove_copies(staged, vectors, homes, collected, settings, progress, timings)

    progress.start("cluster", len(unique))
    started = time.perf_counter()
    texts = prompt_vectors(embedder, settings, spec.labels)
    negatives = prompt_vectors(embedder, settings, spec.exclude)
    encoders = [query_encoder(c.label, settings) for c in spec.classes]  # for the report
    sims = vectors @ texts.T if len(staged) else np.zeros((0, len(spec.classes)), np.float32)
    steer = _Steer(like, negatives, spec.exclude)
    choices = [_choose(c, e, [r for r in unique if c.index in homes[r]], vectors, texts[c.index], steer, settings,
                       embedder) for c, e in zip(spec.classes, encoders)]
    claims = {r: [c.spec.index for c in choices if c.holds(r)] for r in unique}
    excluded = _excluded_pictures(claims, sims, vectors, steer)
    contests = classes.settle({r: cs for r, cs in claims.items() if r not in excluded}, sims, embedder.logit_scale,
                              settings.class_margin)
    picked = Picked(staged, vectors, sims, choices, contests, excluded)
    _keep(picked, spec, claims, unique, homes, collected)
    timings["cluster"] = time.perf_counter() - started
    progress.finish("cluster")
    return picked


def _homes(staged: list[StagedImage], found_by: Mapping[str, set[int]], collected: Collected) -> list[set[int]]:
    """The classes whose search found each staged picture, also through a URL whose bytes were
    the same file (dropped as duplicate_bytes before staging)."""
    homes = [set(found_by.get(s.url, {0})) for s in staged]
    row_of = {s.source_sha256: r for r, s in enumerate(staged)}
    for url, outcome in collected.outcomes.items():
        row = row_of.get(str(outcome.extra.get("sha256")))
        if outcome.reason == "duplicate_bytes" and row is not None:
            homes[row] |= found_by.get(url, set())
    return homes


def _remove_copies(
    staged: list[StagedImage], vectors: np.ndarray, homes: list[set[int]], collected: Collected, settings: Settings,
    progress: Progress, timings: dict[str, float],
) -> list[int]:
    """Drop every copy but the best; the kept copy counts as found by every search that found one."""
    progress.start("dedup", len(staged))
    started = time.perf_counter()
    pairs = dedup.duplicate_pairs([s.fingerprint for s in staged], vectors, settings.phash_distance,
                                  settings.pixel_confirm_correlation, settings.near_duplicate_cosine,
                                  settings.pixel_confirm_colour_difference)
    for index, (keeper, reason) in dedup.choose_keepers(pairs, [s.quality_rank for s in staged]).items():
        collected.drop(staged[index].url, reason, f"copy of {staged[keeper].url}", sha256=staged[index].source_sha256)
        homes[keeper] |= homes[index]
    timings["dedup"] = time.perf_counter() - started
    progress.finish("dedup")
    return [i for i, s in enumerate(staged) if collected.outcomes[s.url].status != "dropped"]


@dataclass(frozen=True)
class _Steer:
    like: np.ndarray | None  # example pictures' unit vectors
    negatives: np.ndarray  # the negative prompts' unit vectors, one row per text
    exclude: tuple[str, ...]  # the negative prompts as given


def _choose(
    spec: ClassSpec, encoder: str | None, members: list[int], vectors: np.ndarray, text: np.ndarray, steer: _Steer,
    settings: Settings, embedder: ClipEmbedder,
) -> ClassChoice:
    labels = cluster.cluster_labels(vectors[members], settings.eps, settings.min_samples)
    summaries = cluster.summarise(labels, vectors[members], text, embedder.logit_scale, steer.like)
    if steer.exclude:
        summaries = [_mark_excluded(s, vectors[members][labels == s.id], steer) for s in summaries]
    selection = cluster.choose(summaries, settings.select, embedder.logit_scale)
    return ClassChoice(spec, encoder, selection, {row: int(label) for row, label in zip(members, labels)})


def _mark_excluded(summary: cluster.ClusterSummary, members: np.ndarray, steer: _Steer) -> cluster.ClusterSummary:
    """A cluster whose members match a negative prompt better, on average, than the query."""
    means = (members @ steer.negatives.T).mean(axis=0)
    worst = int(np.argmax(means))
    return replace(summary, excluded_by=steer.exclude[worst]) if means[worst] > summary.query_similarity else summary


def _excluded_pictures(claims: dict[int, list[int]], sims: np.ndarray, vectors: np.ndarray, steer: _Steer) -> dict[int, str]:
    """Pictures in a kept cluster that match a negative prompt better than every class that would keep them."""
    found: dict[int, str] = {}
    for r, classes_ in claims.items():
        if not classes_ or not steer.exclude:
            continue
        negative = vectors[r] @ steer.negatives.T
        worst, best = int(np.argmax(negative)), max(float(sims[r, c]) for c in classes_)
        if negative[worst] > best:
            found[r] = (f"matches the negative prompt {steer.exclude[worst]!r} ({negative[worst]:.3f}) better than "
                        f"the query ({best:.3f})")
    return found


def _keep(
    picked: Picked, spec: DatasetSpec, claims: dict[int, list[int]], unique: list[int], homes: list[set[int]],
    collected: Collected,
) -> None:
    """Each class keeps its best matches up to --limit (and, with --balance, the smallest class's count)."""
    for choice in picked.choices:
        c = choice.spec.index
        mine = [r for r, cs in claims.items() if c in cs and r not in picked.excluded and _winner(picked.contests, r, c)]
        mine.sort(key=lambda r: (-picked.sims[r, c], picked.staged[r].source_sha256))
        choice.kept = mine[: spec.limit]
    cap = spec.limit
    if spec.balance:
        cap = classes.balanced_cap([len(ch.kept) for ch in picked.choices if ch.kept])
        for choice in picked.choices:
            choice.kept = choice.kept[:cap]
    owner = {r: ch for ch in picked.choices for r in ch.kept}
    for r in sorted(unique, key=lambda r: picked.staged[r].source_sha256):
        _record(picked, spec, r, owner.get(r), claims[r], homes[r], cap, collected)


def _excluded_by(choice: ClassChoice, label: int) -> str | None:
    return next((c.excluded_by for c in choice.selection.clusters if c.id == label), None)


def _winner(contests: dict[int, Contest], row: int, c: int) -> bool:
    contest = contests.get(row)
    return contest is None or contest.winner == c


def _record(
    picked: Picked, spec: DatasetSpec, row: int, owner: ClassChoice | None, claimed_by: list[int],
    home: set[int], cap: int, collected: Collected,
) -> None:
    """One unique picture's outcome, with the class that decided it."""
    image, contest = picked.staged[row], picked.contests.get(row)
    if contest is not None and contest.winner is not None:
        claimed_by = [contest.winner]
    deciding = owner or picked.choices[claimed_by[0] if claimed_by else min(home)]
    label = deciding.labels.get(row, -1)
    outcome = collected.outcomes[image.url]
    outcome.sha256, outcome.extra["cluster"] = image.source_sha256, label
    named = "" if spec.flat else f"for {deciding.spec.label!r}: "
    if not spec.flat:
        outcome.extra["class"] = deciding.spec.label
    chosen = deciding.selection.chosen.id if deciding.selection.chosen else None
    if owner is not None:
        outcome.status = "kept"
    elif row in picked.excluded:
        collected.drop(image.url, "excluded", f"{named}{picked.excluded[row]}")
    elif contest is not None and contest.winner is None:
        best, second = (picked.choices[c].spec.label for c in (contest.best, contest.runner_up))
        collected.drop(image.url, "ambiguous_class", f"matches {best!r} (logit {contest.logits[0]}) and {second!r} "
                       f"(logit {contest.logits[1]}) nearly equally, so it is kept in neither")
    elif claimed_by:
        limit = "--balance" if cap < spec.limit else "--limit"
        collected.drop(image.url, "over_limit", f"{named}cluster has more than {limit} {cap} images")
    elif label == -1:
        collected.drop(image.url, "no_cluster", f"{named}not close enough to any group of similar images")
    elif (negative := _excluded_by(deciding, label)) is not None:
        collected.drop(image.url, "excluded", f"{named}its cluster {label} matches the negative prompt {negative!r} "
                       "better than the query")
    else:
        collected.drop(image.url, "other_cluster", f"{named}belongs to cluster {label}, not the chosen {chosen}")
