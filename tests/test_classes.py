"""Several classes in one dataset: names, the split rule, contested pictures, balance (unit level)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config import Settings
from common.names import class_folders
from common.pipeline import dedup, select
from common.pipeline.accept import StagedImage
from common.pipeline.classes import DatasetSpec, parse_split, settle
from common.pipeline.collect import Collected
from common.pipeline.progress import SilentProgress
from common.pipeline.records import Outcome
from common.pipeline.sources.base import SourceError
from common.pipeline.sources.urls import UrlsSource, labels_in
from common.pipeline.splits import assign_splits, look_alike_groups


def test_class_folders_are_distinct_ascii_names() -> None:
    folders = class_folders(["red panda", "Red-Panda", "고양이", "train", "fox"])
    assert folders[0] == "red-panda" and folders[1] == "red-panda-2"
    assert folders[2].startswith("class-") and len(folders[2]) == len("class-") + 8
    assert folders[3] == "train-2"  # never a split's name: loaders would take it for a split
    assert folders[4] == "fox" and len(set(folders)) == 5


def test_a_dataset_spec_refuses_what_cannot_be_built() -> None:
    assert DatasetSpec(("cat",), 10).flat
    assert not DatasetSpec(("cat", "dog"), 10).flat
    assert not DatasetSpec(("cat",), 10, split=(0.8, 0.2)).flat
    assert not DatasetSpec(("cat",), 10, format="webdataset").flat
    with pytest.raises(ValueError, match="twice"):
        DatasetSpec(("cat", "cat"), 10)
    with pytest.raises(ValueError, match="format"):
        DatasetSpec(("cat",), 10, format="parquet")
    with pytest.raises(ValueError, match="non-empty"):
        DatasetSpec(("cat", " "), 10)
    with pytest.raises(ValueError, match="single query"):
        DatasetSpec(("cat", "dog"), 10, like=("cat.jpg",))


@pytest.mark.parametrize("text, expected", [("0.8,0.1,0.1", (0.8, 0.1, 0.1)), ("0.9,0.1", (0.9, 0.1)),
                                            ("1,0,0", (1.0, 0.0, 0.0))])
def test_split_fractions_parse(text: str, expected: tuple[float, ...]) -> None:
    assert parse_split(text) == expected


@pytest.mark.parametrize("text, message", [("0.8,0.3", "add up to 1"), ("0.8", "two or three"), ("a,b", "numbers"),
                                           ("0,0.5,0.5", "train first"), ("0.5,0.2,0.2,0.1", "two or three")])
def test_bad_split_fractions_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_split(text)


def test_a_contest_goes_to_the_clearly_better_class_and_to_none_when_close() -> None:
    sims = np.array([[0.30, 0.20], [0.25, 0.248], [0.1, 0.3]])
    settled = settle({0: [0, 1], 1: [0, 1], 2: [1]}, sims, logit_scale=100.0, margin=1.0)
    assert settled[0].winner == 0 and settled[0].logits == (30.0, 20.0)
    assert settled[1].winner is None and (settled[1].best, settled[1].runner_up) == (0, 1)
    assert 2 not in settled  # claimed by one class only: no contest


def test_splits_keep_groups_whole_follow_the_fractions_and_repeat_with_the_seed() -> None:
    rng = np.random.default_rng(3)
    classes = [i % 3 for i in range(300)]
    groups = [i // 4 if i < 80 else i for i in range(300)]  # the first 80 pictures come in groups of four
    keys = [f"{rng.integers(1 << 60):016x}" for _ in classes]
    split = assign_splits(classes, groups, keys, (0.8, 0.1, 0.1), seed=0)
    for group in set(groups):
        assert len({split[i] for i in range(300) if groups[i] == group}) == 1
    for c in range(3):
        mine = [split[i] for i in range(300) if classes[i] == c]
        assert abs(mine.count("train") - 80) <= 4 and abs(mine.count("val") - 10) <= 4, mine.count("train")
    assert assign_splits(classes, groups, keys, (0.8, 0.1, 0.1), seed=0) == split
    assert assign_splits(classes, groups, keys, (0.8, 0.1, 0.1), seed=1) != split
    assert set(assign_splits(classes, groups, keys, (0.9, 0.1), seed=0)) == {"train", "val"}


def _noise(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_look_alikes_the_pixels_did_not_confirm_still_share_a_group() -> None:
    """Two re-shoots of one subject: CLIP puts them together, their pixels differ. Not copies, but a
    leak if one is in train and the other in test."""
    vectors = np.eye(4, dtype=np.float32)
    vectors[1] = vectors[0] * 0.99 + vectors[3] * 0.14
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    prints = [dedup.fingerprint(_noise(i)) for i in range(4)]
    assert not dedup.duplicate_pairs(prints, vectors, 10, 0.9, 0.94)
    groups = look_alike_groups(prints, vectors, 0.94, 10)
    assert groups[0] == groups[1] and len({groups[0], groups[2], groups[3]}) == 3


class _TextEmbedder:
    """A fixed text vector per class label (read from the prompt), on CLIP's logit scale."""

    dim, logit_scale = 16, 100.0

    def __init__(self, texts: dict[str, np.ndarray]) -> None:
        self.texts = texts

    def embed_texts(self, texts: list[str], encoder: str | None = None) -> np.ndarray:
        return np.stack([self.texts[text.removeprefix("a photo of ")] for text in texts])


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_a_picture_both_classes_would_keep_joins_the_better_match_or_neither(tmp_path: Path) -> None:
    axes = np.eye(16, dtype=np.float32)
    red_panda, fox = axes[0], axes[1]
    panda_like = [_unit(red_panda + 0.3 * fox + 0.25 * axes[2 + i]) for i in range(5)]
    fox_like = [_unit(fox + 0.3 * red_panda + 0.25 * axes[7 + i]) for i in range(5)]
    halfway = _unit(red_panda + fox + 0.1 * axes[12])  # in both chosen clusters, equally close to both texts
    leaning = _unit(red_panda + 0.75 * fox + 0.1 * axes[13])  # in both, clearly closer to red panda
    vectors = np.stack([*panda_like, *fox_like, halfway, leaning])
    urls = [f"http://x/{i}.jpg" for i in range(len(vectors))]
    staged = [StagedImage(url, f"{i:064x}", tmp_path / f"{i}.jpg", 400, 300, "jpeg", {"sharpness": 500.0},
                          dedup.fingerprint(_noise(i))) for i, url in enumerate(urls)]
    collected = Collected(staged=staged, embeddings=[vectors], outcomes={u: Outcome(u) for u in urls})
    both = {0, 1}
    found_by = {**{u: {0} for u in urls[:5]}, **{u: {1} for u in urls[5:10]}, urls[10]: both, urls[11]: both}
    spec = DatasetSpec(("red panda", "fox"), 10)
    embedder = _TextEmbedder({"red panda": red_panda, "fox": fox})
    picked = select.pick(spec, found_by, collected, Settings(), embedder,  # type: ignore[arg-type]
                         SilentProgress(), {})
    assert all(choice.holds(r) for choice in picked.choices for r in (10, 11))  # a real contest for both
    kept = {choice.spec.label: sorted(picked.staged[r].url for r in choice.kept) for choice in picked.choices}
    assert kept == {"red panda": sorted([*urls[:5], urls[11]]), "fox": sorted(urls[5:10])}
    halfway_outcome = collected.outcomes[urls[10]]
    assert (halfway_outcome.status, halfway_outcome.reason) == ("dropped", "ambiguous_class")
    assert "'red panda'" in (halfway_outcome.detail or "") and "'fox'" in (halfway_outcome.detail or "")
    assert collected.outcomes[urls[11]].extra["class"] == "red panda"

    balanced = Collected(staged=staged, embeddings=[vectors], outcomes={u: Outcome(u) for u in urls})
    spec = DatasetSpec(("red panda", "fox"), 10, balance=True)
    picked = select.pick(spec, found_by, balanced, Settings(), embedder,  # type: ignore[arg-type]
                         SilentProgress(), {})
    assert [len(choice.kept) for choice in picked.choices] == [5, 5]
    cut = [o for o in balanced.outcomes.values() if o.reason == "over_limit"]
    assert len(cut) == 1 and "--balance 5" in (cut[0].detail or "")


def test_a_labelled_url_list_gives_each_class_its_lines() -> None:
    text = "# pets\ncat\thttp://x/1.jpg\ndog\thttp://x/2.jpg\ncat\thttp://x/3.jpg\n"
    listed = UrlsSource("-", stdin=io.StringIO(text))
    assert labels_in(listed.entries()) == ["cat", "dog"]
    assert [c.url for c in listed.search("cat", 10)] == ["http://x/1.jpg", "http://x/3.jpg"]
    assert [c.url for c in listed.search("dog", 10)] == ["http://x/2.jpg"]  # standard input read once
    with pytest.raises(SourceError, match="no line of standard input is labelled 'fox'"):
        listed.search("fox", 10)
    mixed = UrlsSource("-", stdin=io.StringIO("cat\thttp://x/1.jpg\nhttp://x/2.jpg\n"))
    with pytest.raises(SourceError, match="line 2 .* lacks a label"):
        mixed.search("cat", 10)
    unlabelled = UrlsSource("-", stdin=io.StringIO("http://x/1.jpg\n"))
    assert [c.url for c in unlabelled.search("anything", 10)] == ["http://x/1.jpg"]


def test_a_picture_of_a_kept_group_that_matches_a_negative_prompt_better_is_excluded(tmp_path: Path) -> None:
    axes = np.eye(16, dtype=np.float32)
    panda, drawing = axes[0], axes[5]
    members = [_unit(panda + 0.7 * drawing + 0.25 * axes[6 + i]) for i in range(5)]
    sketchy = _unit(panda + 1.05 * drawing + 0.1 * axes[12])  # in the group, but more drawing than red panda
    vectors = np.stack([*members, sketchy])
    urls = [f"http://x/{i}.jpg" for i in range(len(vectors))]
    staged = [StagedImage(url, f"{i:064x}", tmp_path / f"{i}.jpg", 400, 300, "jpeg", {"sharpness": 500.0},
                          dedup.fingerprint(_noise(i))) for i, url in enumerate(urls)]
    collected = Collected(staged=staged, embeddings=[vectors], outcomes={u: Outcome(u) for u in urls})
    spec = DatasetSpec(("red panda",), 10, exclude=("drawing",))
    embedder = _TextEmbedder({"red panda": panda, "drawing": drawing})
    picked = select.pick(spec, {u: {0} for u in urls}, collected, Settings(), embedder,  # type: ignore[arg-type]
                         SilentProgress(), {})
    assert picked.choices[0].holds(5) and picked.choices[0].selection.chosen is not None
    assert sorted(picked.staged[r].url for r in picked.choices[0].kept) == urls[:5]
    outcome = collected.outcomes[urls[5]]
    assert (outcome.status, outcome.reason) == ("dropped", "excluded")
    assert "negative prompt 'drawing'" in (outcome.detail or "")


def test_the_same_file_under_another_classs_url_counts_as_found_by_that_class(tmp_path: Path) -> None:
    """Two searches returned one file at two URLs; the second was dropped as duplicate_bytes before
    staging. The picture still belongs to the second search's class."""
    axes = np.eye(16, dtype=np.float32)
    red_panda, fox = axes[0], axes[1]
    vectors = np.stack([*(_unit(red_panda + 0.25 * axes[2 + i]) for i in range(5)),
                        *(_unit(fox + 0.25 * axes[7 + i]) for i in range(6))])
    urls = [f"http://x/{i}.jpg" for i in range(len(vectors))]
    staged = [StagedImage(url, f"{i:064x}", tmp_path / f"{i}.jpg", 400, 300, "jpeg", {"sharpness": 500.0},
                          dedup.fingerprint(_noise(i))) for i, url in enumerate(urls)]
    same_file = "http://elsewhere/fox.jpg"
    collected = Collected(staged=staged, embeddings=[vectors], outcomes={u: Outcome(u) for u in [*urls, same_file]})
    collected.drop(same_file, "duplicate_bytes", f"same file as {urls[10]}", sha256=staged[10].source_sha256)
    found_by = {**{u: {0} for u in urls[:5]}, **{u: {1} for u in urls[5:10]}, urls[10]: {0}, same_file: {1}}
    embedder = _TextEmbedder({"red panda": red_panda, "fox": fox})
    picked = select.pick(DatasetSpec(("red panda", "fox"), 10), found_by, collected, Settings(), embedder,
                         SilentProgress(), {})  # type: ignore[arg-type]
    assert urls[10] in {picked.staged[r].url for r in picked.choices[1].kept}
