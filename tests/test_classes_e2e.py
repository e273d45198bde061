"""`cvdb build` with several classes end to end: one class per query, one class per picture,
leak-free splits, and each format loaded by the library people train with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_build_e2e import Run, cvdb

from common.devkit import corpus
from common.devkit.scenario import Scenario
from common.pipeline import dedup

CLASSES = (corpus.TARGET, corpus.DISTRACTOR, corpus.LOOKALIKE)  # sunflower, red apple, sun
pytestmark = pytest.mark.slow


def labelled_list(scenario: Scenario) -> tuple[list[str], str]:
    """Each class's own pictures as label<TAB>URL, plus one sunflower picture also listed under
    red apple: it must end up in sunflower only. Returns the lines and that contested URL."""
    ours = sorted((CLASSES.index(label), url) for url, label in scenario.labels.items()
                  if label in CLASSES and url not in scenario.copy_of)
    lines = [f"{CLASSES[index]}\t{url}" for index, url in ours]  # the classes in CLASSES order
    contested = next(url for url, label in scenario.labels.items()
                     if label == corpus.TARGET and url not in scenario.copy_of and "/corpus/" in url)
    return [*lines, f"{corpus.DISTRACTOR}\t{contested}"], contested


def build(tmp_path: Path, model: Path, lines: list[str], *args: str) -> Run:
    tmp_path.mkdir(parents=True, exist_ok=True)
    listing = tmp_path / "labelled.tsv"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = cvdb(tmp_path, model, "build", "--urls", str(listing), "--out", "data/set", *args)
    return Run(done.returncode, done.stdout, done.stderr, tmp_path / "data" / "set")


@pytest.fixture(scope="module")
def split_run(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path, scenario: Scenario) -> tuple[Run, str]:
    lines, contested = labelled_list(scenario)
    return build(tmp_path_factory.mktemp("split"), tiny_clip, lines, "--split", "0.6,0.2,0.2", "--limit", "20"), contested


def test_each_query_is_a_class_folder_in_each_split(split_run: tuple[Run, str], scenario: Scenario) -> None:
    run, _ = split_run
    assert run.code == 0, run.stderr
    classes = json.loads((run.out / "classes.json").read_text())
    assert [c["label"] for c in classes] == list(CLASSES)
    assert [c["index"] for c in classes] == [0, 1, 2]
    folders = {c["label"]: c["folder"] for c in classes}
    for row in run.manifest:
        split, folder, name = row["file"].split("/")
        assert split == row["split"] and folder == folders[row["label"]] and name.startswith("img_")
        assert scenario.labels[row["url"]] == row["label"]  # every picture in its own class
        assert Image.open(run.out / row["file"]).format == "JPEG"
    kept = {c["label"]: c["kept"] for c in classes}
    assert all(n >= 5 for n in kept.values()), kept
    assert sum(kept.values()) == len(run.manifest) == run.report["counts"]["kept"]
    assert {c["label"]: c["counts"]["kept"] for c in run.report["classes"]} == kept
    assert "Classes" in run.stderr


def test_a_picture_two_classes_found_is_kept_once_in_the_class_it_matches(split_run: tuple[Run, str]) -> None:
    run, contested = split_run
    rows = [row for row in run.manifest if row["url"] == contested]
    assert [row["label"] for row in rows] == [corpus.TARGET]
    assert len({row["source_sha256"] for row in run.manifest}) == len(run.manifest)


def test_splits_follow_the_fractions_per_class_and_share_no_look_alikes(split_run: tuple[Run, str]) -> None:
    run, _ = split_run
    for label in CLASSES:
        splits = [row["split"] for row in run.manifest if row["label"] == label]
        counts = {name: splits.count(name) for name in ("train", "val", "test")}
        assert abs(counts["train"] - 0.6 * len(splits)) <= 1.5, counts
        assert counts["train"] > counts["val"] >= 1 and counts["test"] >= 1, counts
    hashes = {row["file"]: dedup.phash(Image.open(run.out / row["file"]).convert("L")) for row in run.manifest}
    for a in run.manifest:
        for b in run.manifest:
            if a["split"] != b["split"]:
                assert bin(hashes[a["file"]] ^ hashes[b["file"]]).count("1") > 10, (a["file"], b["file"])


def test_the_same_seed_gives_the_same_splits(split_run: tuple[Run, str], tiny_clip: Path, scenario: Scenario,
                                              tmp_path: Path) -> None:
    run, _ = split_run
    lines, _ = labelled_list(scenario)
    again = build(tmp_path / "again", tiny_clip, lines, "--split", "0.6,0.2,0.2", "--limit", "20")
    assert again.code == 0, again.stderr
    assert {r["url"]: r["split"] for r in again.manifest} == {r["url"]: r["split"] for r in run.manifest}
    other = build(tmp_path / "other", tiny_clip, lines, "--split", "0.6,0.2,0.2", "--limit", "20", "--seed", "7")
    assert {r["url"]: r["split"] for r in other.manifest} != {r["url"]: r["split"] for r in run.manifest}


def test_the_imagefolder_layout_loads_with_datasets(split_run: tuple[Run, str]) -> None:
    import datasets

    run, _ = split_run
    loaded = datasets.load_dataset("imagefolder", data_dir=str(run.out))
    assert sorted(loaded) == ["test", "train", "validation"]
    names = loaded["train"].features["label"].names
    folders = {c["folder"]: c["label"] for c in json.loads((run.out / "classes.json").read_text())}
    for split, rows in (("train", "train"), ("validation", "val"), ("test", "test")):
        expected = sorted(folders[r["file"].split("/")[1]] for r in run.manifest if r["split"] == rows)
        assert sorted(folders[names[label]] for label in loaded[split]["label"]) == expected


@pytest.fixture(scope="module")
def balanced_webdataset(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path, scenario: Scenario) -> Run:
    lines, _ = labelled_list(scenario)
    return build(tmp_path_factory.mktemp("wds"), tiny_clip, lines, "--format", "webdataset", "--balance")


def test_webdataset_shards_load_with_their_labels_and_balance_evens_the_classes(balanced_webdataset: Run) -> None:
    import webdataset

    run = balanced_webdataset
    assert run.code == 0, run.stderr
    shards = sorted(str(p) for p in run.out.glob("*.tar"))
    assert shards and not list(run.out.glob("*/img_*.jpg"))
    samples = list(webdataset.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "cls", "json"))
    rows = {row["key"]: row for row in run.manifest}
    assert len(samples) == len(rows)
    for key, image, index, meta in samples:
        assert CLASSES[index] == meta["label"] == rows[key]["label"]
        assert image.size == (rows[key]["width"], rows[key]["height"])
    per_class = [sum(1 for *_, meta in samples if meta["label"] == label) for label in CLASSES]
    assert len(set(per_class)) == 1 and per_class[0] >= 5, per_class
    assert "--balance" in json.dumps(run.report["outcomes"], ensure_ascii=False)


def test_hf_format_loads_from_disk_with_class_labels(tiny_clip: Path, scenario: Scenario, tmp_path: Path) -> None:
    import datasets

    lines, _ = labelled_list(scenario)
    run = build(tmp_path, tiny_clip, lines, "--format", "hf", "--split", "0.8,0.2", "--limit", "10")
    assert run.code == 0, run.stderr
    loaded = datasets.load_from_disk(str(run.out))
    assert sorted(loaded) == ["train", "validation"]
    assert loaded["train"].features["label"].names == list(CLASSES)
    rows = {(r["hf_split"], r["hf_row"]): r for r in run.manifest}
    for split in loaded:
        for i, example in enumerate(loaded[split]):
            row = rows[(split, i)]
            assert CLASSES[example["label"]] == row["label"] and example["url"] == row["url"]
            assert np.asarray(example["image"]).shape[:2] == (row["height"], row["width"])
    assert len(rows) == sum(len(loaded[s]) for s in loaded)

    again = build(tmp_path, tiny_clip, lines, "--format", "webdataset", "--overwrite", "--limit", "5")
    assert again.code == 0, again.stderr
    left = sorted(p.relative_to(again.out).as_posix() for p in again.out.rglob("*") if p.is_file())
    assert left == [".cvdb-owner", "00000.tar", "classes.json", "embeddings.npy", "manifest.jsonl", "report.json"]


def test_deleting_a_dataset_of_classes_removes_its_folders(split_run: tuple[Run, str], tiny_clip: Path,
                                                            scenario: Scenario, tmp_path: Path) -> None:
    """--overwrite replaces a dataset of classes: the old class and split folders go with their files."""
    lines, _ = labelled_list(scenario)
    first = build(tmp_path, tiny_clip, lines, "--split", "0.6,0.2,0.2", "--limit", "5")
    assert first.code == 0, first.stderr
    flat_lines = [line for line in lines if line.startswith(f"{corpus.TARGET}\t")]
    second = build(tmp_path, tiny_clip, flat_lines, "--overwrite", "--limit", "5")
    assert second.code == 0, second.stderr
    assert sorted(p.name for p in second.out.iterdir() if p.is_dir()) == []
    assert all("/" not in row["file"] for row in second.manifest)


def test_korean_queries_sort_one_unlabelled_list_into_their_classes(tiny_clip: Path, scenario: Scenario,
                                                                    tmp_path: Path) -> None:
    """Every class searches the same URL list; each keeps its own group, scored by the multilingual
    encoder, and no picture lands in both."""
    korean = {corpus.TARGET: "해바라기", corpus.DISTRACTOR: "사과"}
    urls = [u for u, label in scenario.labels.items() if label in korean and u not in scenario.copy_of]
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
    done = cvdb(tmp_path, tiny_clip, "build", *korean.values(), "--urls", str(tmp_path / "urls.txt"),
                "--out", "data/set")
    run = Run(done.returncode, done.stdout, done.stderr, tmp_path / "data" / "set")
    assert run.code == 0, run.stderr
    for english, label in korean.items():
        rows = [row for row in run.manifest if row["label"] == label]
        assert len(rows) >= 10 and all(scenario.labels[row["url"]] == english for row in rows), label
        assert all(row["file"].startswith("class-") for row in rows)  # an ASCII folder; classes.json names it
    assert {c["query_encoder"] for c in run.report["classes"]} == {"multilingual"}
    assert len({row["url"] for row in run.manifest}) == len(run.manifest)
