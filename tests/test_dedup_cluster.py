"""Duplicates (exact, confirmed pHash, embedding) and cluster selection on plain arrays."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config import Settings
from common.devkit import planted
from common.pipeline import cluster, dedup, select
from common.pipeline.accept import StagedImage
from common.pipeline.classes import DatasetSpec
from common.pipeline.collect import Collected
from common.pipeline.finish import finish
from common.pipeline.progress import SilentProgress
from common.pipeline.records import Outcome


def _stripes(period: float, angle: float, phase: float, colours: tuple[int, int]) -> Image.Image:
    yy, xx = np.mgrid[0:360, 0:480].astype(np.float32)
    wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period + phase) > 0
    grey = np.where(wave, colours[0], colours[1]).astype(np.uint8)
    return Image.fromarray(np.stack([grey, grey // 2 + 60, 255 - grey], axis=-1))


def _checks(cell: int, offset: int) -> Image.Image:
    yy, xx = np.mgrid[0:360, 0:480]
    board = ((((xx + offset) // cell) + ((yy + offset) // cell)) % 2 * 200 + 30).astype(np.uint8)
    return Image.fromarray(np.stack([board, board, board // 3], axis=-1))


PATTERNS = [
    _stripes(24, 0.0, 0.0, (230, 20)), _stripes(24, 0.0, 0.0, (120, 250)), _stripes(30, 0.0, 1.0, (200, 40)),
    _stripes(24, 0.05, 0.5, (220, 30)), _checks(40, 0), _checks(52, 20), _checks(64, 10), _checks(30, 5),
]


def _reencode(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_phash_has_imagehash_bits() -> None:
    import imagehash

    from common.devkit import corpus

    pictures = PATTERNS + [corpus.render(name, np.random.default_rng(seed)) for name in ("sunflower", "red apple") for seed in range(6)]
    for picture in pictures:
        assert dedup.phash(picture.convert("L")) == int(str(imagehash.phash(picture)), 16)


def _pairs(images: list[Image.Image]) -> list[tuple[int, int, str]]:
    no_embeddings = np.eye(len(images), dtype=np.float32)  # orthogonal: the embedding signal stays silent
    return dedup.duplicate_pairs([dedup.fingerprint(im) for im in images], no_embeddings, 10, 0.90, 0.94)


def test_distinct_patterns_collide_under_phash_but_survive() -> None:
    prints = [dedup.fingerprint(im) for im in PATTERNS]
    collisions = sum(
        bin(a.phash ^ b.phash).count("1") <= 10 for i, a in enumerate(prints) for b in prints[i + 1 :]
    )
    assert collisions >= 1, "the fixture must contain pHash collisions to prove anything"
    assert _pairs(PATTERNS) == []


def test_the_same_stripes_in_other_colours_are_another_picture() -> None:
    mask = np.asarray(_stripes(24, 0.0, 0.0, (255, 0)).convert("L")) > 127
    red_white = Image.fromarray(np.where(mask[..., None], [200, 30, 30], [250, 250, 250]).astype(np.uint8))
    blue_white = Image.fromarray(np.where(mask[..., None], [30, 30, 200], [250, 250, 250]).astype(np.uint8))
    stripes, recoloured = red_white, blue_white
    a, b = dedup.fingerprint(stripes), dedup.fingerprint(recoloured)
    assert bin(a.phash ^ b.phash).count("1") <= 10 and dedup.aligned_correlation(a.thumb, b.thumb) > 0.9
    assert _pairs([stripes, recoloured]) == []  # only the colour layout tells them apart


def test_real_copies_are_found() -> None:
    original = planted.photo(30, (640, 480))
    resized = original.resize((400, 300), Image.Resampling.LANCZOS)
    reencoded = _reencode(original, 55)
    cropped = original.crop((16, 12, 624, 468))
    other = planted.photo(31, (640, 480))
    pairs = _pairs([original, resized, reencoded, cropped, other])
    linked = {j for i, j, _ in pairs if i == 0}
    assert linked == {1, 2, 3}
    assert all(reason == "near_duplicate_phash" for *_, reason in pairs)


def test_exact_pixels_and_embedding_near_copies() -> None:
    image = planted.photo(32)
    w, h = image.size
    cropped = image.crop((w // 40, h // 40, w - w // 40, h - h // 40))  # pHash 6 bits away
    vectors = np.array([[1, 0, 0], [1, 0, 0], [0.96, 0.28, 0], [0.96, -0.28, 0], [0, 1, 0]], np.float32)
    prints = [dedup.fingerprint(image), dedup.fingerprint(image.copy()), dedup.fingerprint(cropped),
              dedup.fingerprint(planted.photo(33)), dedup.fingerprint(planted.photo(34))]
    # pHash distance 0: only the embedding proposes the cropped copy, and its pixels confirm it.
    reasons = {(i, j): r for i, j, r in dedup.duplicate_pairs(prints, vectors, 0, 0.9, 0.94)}
    assert reasons[(0, 1)] == "duplicate_pixels"
    assert reasons[(0, 2)] == "near_duplicate_embedding"
    # Another picture whose embedding is as close is no copy: its pixels disagree.
    assert (0, 3) not in reasons and (2, 3) not in reasons and (0, 4) not in reasons


def test_the_best_copy_is_kept() -> None:
    pairs = [(0, 1, "near_duplicate_phash"), (1, 2, "near_duplicate_embedding")]
    quality = [(100.0, 50.0), (400.0, 10.0), (400.0, 90.0), (1.0, 1.0)]
    dropped = dedup.choose_keepers(pairs, quality)
    assert dropped == {0: (2, "near_duplicate_phash"), 1: (2, "near_duplicate_phash")}


def _blob(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float) -> np.ndarray:
    points = centre + rng.normal(0, spread, (n, centre.size))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


@pytest.fixture()
def two_groups() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A target group of 10 and an off-topic group of 18, both tight; a query near the target."""
    rng = np.random.default_rng(0)
    target, other = np.eye(16)[0], np.eye(16)[1]
    vectors = np.concatenate([_blob(rng, target, 10, 0.05), _blob(rng, other, 18, 0.05)])
    # Real CLIP's modality gap: the query matches the target at ~0.30 and the other group at ~0.20.
    query = 0.30 * target + 0.20 * other + 0.93 * np.eye(16)[5]
    return vectors.astype(np.float32), (query / np.linalg.norm(query)).astype(np.float32), np.array([0] * 10 + [1] * 18)


def test_query_selection_beats_a_bigger_off_topic_group(two_groups: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    vectors, query, truth = two_groups
    labels = cluster.cluster_labels(vectors, eps=0.18, min_samples=3)
    summaries = cluster.summarise(labels, vectors, query, logit_scale=100.0)
    assert len(summaries) == 2
    by_query = cluster.choose(summaries, "query", 100.0)
    by_size = cluster.choose(summaries, "largest", 100.0)
    target_label = labels[truth == 0][0]
    assert by_query.chosen is not None and by_query.chosen.id == target_label
    assert by_size.chosen is not None and by_size.chosen.id != target_label
    assert "matches the query less" in by_query.reason


def test_raw_similarity_times_size_would_pick_the_wrong_group(two_groups: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Why the logit scale matters: size x raw cosine favours a look-alike group more than 1.5x bigger."""
    vectors, query, truth = two_groups
    naive = {g: (truth == g).sum() * float((vectors[truth == g] @ query).mean()) for g in (0, 1)}
    assert naive[1] > naive[0]


def test_no_cluster_is_an_explained_outcome() -> None:
    vectors = np.eye(8, dtype=np.float32)
    labels = cluster.cluster_labels(vectors, 0.18, 3)
    selection = cluster.choose(cluster.summarise(labels, vectors, vectors[0], 100.0), "query", 100.0)
    assert selection.chosen is None and "no cluster" in selection.reason


class _QueryEmbedder:
    """All `_select` asks of an embedder: a fixed vector for the query's prompt."""

    dim = 16
    logit_scale = 100.0

    def __init__(self, query: np.ndarray) -> None:
        self.query = query

    def embed_texts(self, texts: list[str], encoder: str | None = None) -> np.ndarray:
        assert encoder is None  # an English query: CLIP's own text tower
        return np.stack([self.query for _ in texts])


def test_a_cluster_over_the_limit_keeps_its_best_matches_and_drops_the_rest_as_over_limit(tmp_path: Path) -> None:
    """Six distinct pictures in one group, limit 3: the three closest to the query stay, whatever their order."""
    axes = np.eye(16, dtype=np.float32)
    pull = [0.0, 0.5, 0.1, 0.4, 0.2, 0.3]  # how far the query leans towards each member
    vectors = np.stack([axes[0] + 0.4 * axes[i + 1] for i in range(6)] + [axes[15]])  # the last one is alone
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query = axes[0] + sum(w * axes[i + 1] for i, w in enumerate(pull))
    staged = [StagedImage(url=f"http://x/{i}.jpg", source_sha256=f"{i:064x}", path=tmp_path / f"{i}.jpg", width=480,
                          height=360, image_format="jpeg", scores={"sharpness": 500.0},
                          fingerprint=dedup.fingerprint(PATTERNS[i])) for i in range(7)]
    collected = Collected(staged=staged, embeddings=[vectors], outcomes={s.url: Outcome(s.url) for s in staged})
    embedder = _QueryEmbedder(query / np.linalg.norm(query))
    found_by = {s.url: {0} for s in staged}
    picked = select.pick(DatasetSpec(("q",), 3), found_by, collected, Settings(), embedder,  # type: ignore[arg-type]
                         SilentProgress(), {})
    selection = picked.choices[0].selection
    kept = [picked.staged[r] for r in picked.choices[0].kept]
    sims = {image.url: float(picked.sims[r, 0]) for r, image in enumerate(picked.staged)}
    assert selection.chosen is not None and selection.chosen.size == 6
    assert [image.url for image in kept] == ["http://x/1.jpg", "http://x/3.jpg", "http://x/5.jpg"]  # best first
    assert sims["http://x/1.jpg"] > sims["http://x/3.jpg"] > sims["http://x/5.jpg"] > sims["http://x/4.jpg"]
    outcomes = {url: (o.status, o.reason) for url, o in collected.outcomes.items()}
    assert outcomes == {
        "http://x/0.jpg": ("dropped", "over_limit"), "http://x/1.jpg": ("kept", None),
        "http://x/2.jpg": ("dropped", "over_limit"), "http://x/3.jpg": ("kept", None),
        "http://x/4.jpg": ("dropped", "over_limit"), "http://x/5.jpg": ("kept", None),
        "http://x/6.jpg": ("dropped", "no_cluster"),
    }


def test_an_embedding_match_counts_as_a_copy_only_when_the_pixels_agree(tiny_clip: Path) -> None:
    """Distinct patterned pictures (stripes, checkerboards) sit close in CLIP space: at the default
    cosine a match on the embedding alone took most of them for copies. Confirmed by the aligned
    thumbnail correlation and colour layout, as a pHash match is, they survive and real copies do not."""
    from common.devkit import corpus
    from common.pipeline.embed import ClipEmbedder

    distinct = [corpus.render(name, corpus.image_rng(21, name, i)) for name in corpus.PATTERNED for i in range(45)]

    def re_upload(image: Image.Image) -> Image.Image:
        small = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=80)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    copied = [0, 20, 45, 70]
    pictures = distinct + [re_upload(distinct[k]) for k in copied]
    vectors = ClipEmbedder(str(tiny_clip), device="cpu").embed_images(pictures)
    defaults = Settings()
    pairs = dedup.duplicate_pairs([dedup.fingerprint(p) for p in pictures], vectors, defaults.phash_distance,
                                  defaults.pixel_confirm_correlation, defaults.near_duplicate_cosine,
                                  defaults.pixel_confirm_colour_difference)
    dropped = dedup.choose_keepers(pairs, [(float(p.width * p.height),) for p in pictures])
    kept_distinct = [i for i in range(len(distinct)) if i not in dropped]
    assert len(kept_distinct) >= 0.9 * len(distinct), f"{len(kept_distinct)} of {len(distinct)} kept"
    assert all(len(distinct) + n in dropped for n in range(len(copied)))  # every re-upload goes


class _DescribedEmbedder(_QueryEmbedder):
    """What `finish` asks beyond `_select`: the model's description for the report."""

    def describe(self) -> dict[str, object]:
        return {"model": "test", "device": "cpu", "logit_scale": self.logit_scale, "embedding_dim": self.dim}


def test_a_kept_picture_whose_export_decode_fails_is_dropped_and_the_rest_saved(tmp_path: Path) -> None:
    """Export decodes each kept download in full, in a decode worker under the time budget: a file
    that passed the checks but fails now (here, staged bytes cut short, and a decode that overruns)
    is dropped for its reason, not the whole dataset."""
    from test_hostile_decode import scan_bomb

    from common.names import image_name
    from common.pipeline import export
    from common.pipeline.records import Candidate

    out = tmp_path / "data" / "set"
    staging = export.make_staging(out)
    axes = np.eye(16, dtype=np.float32)
    vectors = np.stack([axes[0] + 0.4 * axes[i + 1] for i in range(6)] + [axes[15]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query = axes[0] + sum(w * axes[i + 1] for i, w in enumerate([0.0, 0.5, 0.1, 0.4, 0.2, 0.3]))
    staged = []
    for i in range(7):
        data = _jpeg(PATTERNS[i])
        path = staging / f"{i:016x}.download"
        # The best match is cut short; the second best takes minutes to decode in full.
        path.write_bytes({1: data[: len(data) // 2], 3: scan_bomb(2000, 30_000)}.get(i, data))
        staged.append(StagedImage(f"http://x/{i}.jpg", f"{i:064x}", path, 480, 360, "jpeg", {"sharpness": 500.0},
                                  dedup.fingerprint(PATTERNS[i])))
    collected = Collected(staged=staged, embeddings=[vectors], outcomes={s.url: Outcome(s.url) for s in staged})
    candidates = [Candidate(url=s.url, rank=i) for i, s in enumerate(staged)]
    embedder = _DescribedEmbedder(query / np.linalg.norm(query))
    settings = Settings(max_jpeg_scans=100_000, decode_timeout_s=1.0)
    result = finish(DatasetSpec(("q",), 3), {"q": candidates}, out, settings, embedder,  # type: ignore[arg-type]
                    collected, SilentProgress(), {})
    assert result.kept == 1
    assert collected.outcomes["http://x/1.jpg"].reason == "truncated"
    assert "at export" in (collected.outcomes["http://x/1.jpg"].detail or "")
    assert collected.outcomes["http://x/3.jpg"].reason == "decode_timeout"
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["url"], r["file"]) for r in rows] == [("http://x/5.jpg", image_name(1))]
    assert result.report["counts"]["kept"] == 1
    assert result.report["dropped"]["truncated"] == 1 and result.report["dropped"]["decode_timeout"] == 1


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
