"""Steering a build with example pictures and negative prompts, and searching what was built:
the real `cvdb` command, the fixture pictures served on 127.0.0.1, the tiny CLIP."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests
from test_build_e2e import Run, cvdb, cvdb_build
from test_classes_e2e import build as build_classes
from test_classes_e2e import labelled_list

from common.devkit import corpus
from common.devkit.scenario import Scenario

pytestmark = pytest.mark.slow
VAGUE = "summer"  # the tiny model reads it close to "sun": the look-alike group wins on the text alone


def kept_labels(run: Run, scenario: Scenario) -> Counter[str]:
    return Counter(scenario.labels.get(row["url"], "?") for row in run.manifest)


def targets(scenario: Scenario, n: int) -> list[str]:
    return [u for u, label in scenario.labels.items() if label == corpus.TARGET and "/corpus/" in u][:n]


@pytest.fixture(scope="module")
def vague_run(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path, scenario: Scenario) -> Run:
    return cvdb_build(tmp_path_factory.mktemp("vague"), tiny_clip, scenario.urls, query=VAGUE)


def test_a_vague_query_alone_keeps_the_look_alike_group(vague_run: Run, scenario: Scenario) -> None:
    assert vague_run.code == 0, vague_run.stderr
    assert set(kept_labels(vague_run, scenario)) == {corpus.LOOKALIKE}


def test_three_example_pictures_pick_the_right_group(tiny_clip: Path, scenario: Scenario, tmp_path: Path) -> None:
    first, second, third = targets(scenario, 3)
    local = tmp_path / "example.jpg"
    local.write_bytes(requests.get(third, timeout=10).content)  # one example as a file, two as URLs
    run = cvdb_build(tmp_path / "run", tiny_clip, scenario.urls, "--like", first, "--like", second,
                     "--like", str(local), query=VAGUE)
    assert run.code == 0, run.stderr
    assert set(kept_labels(run, scenario)) == {corpus.TARGET}
    report = run.report
    chosen = next(c for c in report["clusters"] if c["id"] == report["chosen_cluster"])
    assert chosen["like_similarity"] > 0.8 and "example similarity" in report["selection_reason"]
    assert report["steering"]["like"] == [first, second, "example.jpg"]  # a local path by its name only


def test_a_negative_prompt_removes_the_look_alike_group(tiny_clip: Path, scenario: Scenario, tmp_path: Path) -> None:
    run = cvdb_build(tmp_path, tiny_clip, scenario.urls, "--exclude", corpus.LOOKALIKE, query=VAGUE)
    assert run.code == 0, run.stderr
    assert corpus.LOOKALIKE not in kept_labels(run, scenario) and len(run.manifest) >= 10
    look_alikes = [u for u, label in scenario.labels.items() if label == corpus.LOOKALIKE]
    for url in look_alikes:
        assert run.outcomes[url]["reason"] == "excluded", run.outcomes[url]
        assert f"negative prompt {corpus.LOOKALIKE!r}" in run.outcomes[url]["detail"]
    assert any(c.get("excluded_by") == corpus.LOOKALIKE for c in run.report["clusters"])
    assert run.report["steering"]["exclude"] == [corpus.LOOKALIKE]


def test_an_example_that_is_not_a_picture_stops_the_build_before_the_search(tiny_clip: Path, scenario: Scenario,
                                                                             tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not a picture")
    run = cvdb_build(tmp_path, tiny_clip, scenario.urls, "--like", str(tmp_path / "notes.jpg"), query=VAGUE)
    said = " ".join(run.stderr.split())  # the console wraps long lines
    assert run.code != 0 and "example picture" in said and "cannot be used: decode_error" in said
    missing = cvdb_build(tmp_path / "b", tiny_clip, scenario.urls, "--like", "no-such.jpg", query=VAGUE)
    assert missing.code != 0 and "neither an http(s) URL nor a file" in " ".join(missing.stderr.split())
    assert not (tmp_path / "data" / "set" / "manifest.jsonl").exists()


@pytest.fixture(scope="module")
def classes_run(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path, scenario: Scenario) -> Run:
    lines, _ = labelled_list(scenario)
    run = build_classes(tmp_path_factory.mktemp("find"), tiny_clip, lines, "--limit", "10")
    assert run.code == 0, run.stderr
    return run


def find(run: Run, model: Path, *args: str) -> list[dict[str, object]]:
    done = cvdb(run.out.parents[1], model, "find", str(run.out), *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_dataset_keeps_its_embeddings_in_manifest_order(classes_run: Run) -> None:
    vectors = np.load(classes_run.out / "embeddings.npy")
    assert vectors.dtype == np.float16 and len(vectors) == len(classes_run.manifest)
    assert classes_run.report["embeddings"]["model"] == classes_run.report["model"]["model"]


def test_text_search_ranks_the_class_it_names_first(classes_run: Run, tiny_clip: Path) -> None:
    for label in (corpus.TARGET, corpus.DISTRACTOR):
        hits = find(classes_run, tiny_clip, label, "--top", "5")
        assert len(hits) == 5 and all(hit["label"] == label for hit in hits), hits
        scores = [hit["score"] for hit in hits]
        assert scores == sorted(scores, reverse=True)


def test_picture_search_ranks_look_alikes_of_the_example_first(classes_run: Run, tiny_clip: Path) -> None:
    sun = next(row for row in classes_run.manifest if row["label"] == corpus.LOOKALIKE)
    hits = find(classes_run, tiny_clip, "--like", str(classes_run.out / sun["file"]), "--top", "5")
    assert hits[0]["file"] == sun["file"] and hits[0]["score"] > 0.99
    assert all(hit["label"] == corpus.LOOKALIKE for hit in hits), hits


def test_searching_with_another_model_is_refused(classes_run: Run, tiny_clip: Path, shifted_clip: Path) -> None:
    done = cvdb(classes_run.out.parents[1], tiny_clip, "find", str(classes_run.out), "sun",
                "--model", str(shifted_clip))
    assert done.returncode != 0 and "embedded with" in " ".join(done.stderr.split())
    nothing = cvdb(classes_run.out.parents[1], tiny_clip, "find", str(classes_run.out.parent), "sun")
    assert nothing.returncode != 0 and "no finished dataset" in " ".join(nothing.stderr.split())
