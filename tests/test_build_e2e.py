"""`cvdb build` end to end: the real command, a real HTTP server on 127.0.0.1, the tiny CLIP."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from common.devkit import corpus
from common.devkit.demo import tiny_model_settings
from common.devkit.fake_naver import FakeNaver
from common.devkit.scenario import CLUSTERED_AWAY, KEPT, Scenario

CVDB = str(Path(sys.executable).parent / "cvdb")
DUPLICATE_REASONS = {"duplicate_bytes", "duplicate_pixels", "near_duplicate_phash", "near_duplicate_embedding"}


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    out: Path

    @property
    def manifest(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.out / "manifest.jsonl").read_text().splitlines()]

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.out / "report.json").read_text())

    @property
    def outcomes(self) -> dict[str, dict[str, Any]]:
        return {o["url"]: o for o in self.report["outcomes"]}


def cvdb(tmp_path: Path, model: Path, *args: str, settings: dict[str, object] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `cvdb` command with settings given as CVDB_* environment variables."""
    env = {**os.environ, "CVDB_DATA_ROOT": str(tmp_path / "data")}
    values = {**tiny_model_settings(model), **(settings or {})}
    env.update({f"CVDB_{k.upper()}": str(v) for k, v in values.items()})
    return subprocess.run([CVDB, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def cvdb_build(tmp_path: Path, model: Path, urls: list[str] | None, *args: str, query: str = corpus.TARGET,
               settings: dict[str, object] | None = None) -> Run:
    """`cvdb build` over a URL list, or with the default source when `urls` is None."""
    source_args: list[str] = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    if urls is not None:
        urls_file = tmp_path / "candidates.txt"
        urls_file.write_text("\n".join(urls) + "\n")
        source_args = ["--source", "urls", "--urls", str(urls_file)]
    done = cvdb(tmp_path, model, "build", query, *source_args, "--out", "data/set", *args, settings=settings)
    return Run(done.returncode, done.stdout, done.stderr, tmp_path / "data" / "set")


@pytest.fixture(scope="module")
def query_run(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path, scenario: Scenario) -> Run:
    return cvdb_build(tmp_path_factory.mktemp("query"), tiny_clip, scenario.urls, "--limit", "100")


def test_saves_a_numbered_dataset_and_says_so(query_run: Run) -> None:
    assert query_run.code == 0, query_run.stderr
    kept = len(query_run.manifest)
    assert f"Saved {kept} images to" in query_run.stdout
    files = sorted(p.name for p in query_run.out.iterdir())
    assert files == ([".cvdb-owner", "embeddings.npy"] + [f"img_{i:04d}.jpg" for i in range(1, kept + 1)]
                     + ["manifest.jsonl", "report.json"])
    vectors = np.load(query_run.out / "embeddings.npy")
    assert vectors.dtype == np.float16 and vectors.shape == (kept, query_run.report["embeddings"]["dim"])
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=1e-2)
    for row in query_run.manifest:
        assert {"query", "file", "source", "url", "sha256", "width", "height", "cluster", "scores"} <= row.keys()
        assert row["sha256"] == hashlib.sha256((query_run.out / row["file"]).read_bytes()).hexdigest()
        with Image.open(query_run.out / row["file"]) as image:
            assert image.format == "JPEG" and image.size == (row["width"], row["height"])
            assert not image.getexif()  # no original metadata survives


def test_query_selection_keeps_only_the_target(query_run: Run, scenario: Scenario) -> None:
    kept_urls = {row["url"] for row in query_run.manifest}
    assert kept_urls, query_run.stderr
    assert all(scenario.labels.get(url) == corpus.TARGET for url in kept_urls)
    must_keep = {url for url, expected in scenario.expected.items() if expected == KEPT}
    missing = must_keep - kept_urls - set(scenario.copy_of.values())
    assert len(missing) <= 2, f"target pictures lost: {sorted(missing)}"


def test_every_planted_problem_is_dropped_for_its_reason(query_run: Run, scenario: Scenario) -> None:
    outcomes = query_run.outcomes
    assert set(outcomes) == set(scenario.urls)  # every URL has an outcome
    for url, expected in scenario.expected.items():
        if expected in (KEPT, CLUSTERED_AWAY, "near_duplicate") or url in scenario.copy_of:
            continue
        assert outcomes[url].get("reason") == expected, (url, outcomes[url])


def test_copies_are_removed_keeping_one_of_each(query_run: Run, scenario: Scenario) -> None:
    outcomes = query_run.outcomes
    for copy, original in scenario.copy_of.items():
        pair = [outcomes[copy], outcomes[original]]
        assert sum(o.get("reason") in DUPLICATE_REASONS for o in pair) >= 1, pair
    patterned = [url for url, label in scenario.labels.items() if label in corpus.PATTERNED]
    assert not [u for u in patterned if outcomes[u].get("reason") in DUPLICATE_REASONS]


def test_every_format_is_kept_upright(query_run: Run, scenario: Scenario) -> None:
    rows = {row["url"]: row for row in query_run.manifest}
    for url, upright in scenario.upright.items():
        assert url in rows, f"{url} was dropped: {query_run.outcomes[url]}"
        saved = Image.open(query_run.out / rows[url]["file"]).convert("RGB")
        assert saved.size == upright.size
        error = np.abs(np.asarray(saved, np.float32) - np.asarray(upright, np.float32)).mean()
        flipped = np.abs(np.asarray(saved, np.float32) - np.asarray(upright.rotate(180), np.float32)).mean()
        assert error < 0.5 * flipped


def test_report_explains_counts_clusters_and_thresholds(query_run: Run) -> None:
    report = query_run.report
    assert report["counts"]["kept"] == len(query_run.manifest)
    assert report["counts"]["candidates"] == len(report["outcomes"])
    assert sum(report["dropped"].values()) + report["counts"]["kept"] == report["counts"]["candidates"]
    assert report["thresholds"]["eps"] == 0.18 and report["thresholds"]["min_samples"] == 3
    assert report["chosen_cluster"] in {c["id"] for c in report["clusters"]}
    assert "matches the query less" in report["selection_reason"]
    assert report["versions"]["torch"] and report["model"]["logit_scale"] > 0
    assert "Selection (query)" in query_run.stderr and "Dropped" in query_run.stderr


@pytest.mark.parametrize("model", ["tiny_clip", "shifted_clip"])
def test_largest_picks_the_bigger_off_topic_group_where_query_does_not(
    model: str, request: pytest.FixtureRequest, scenario: Scenario, tmp_path: Path
) -> None:
    model_dir = request.getfixturevalue(model)
    by_size = cvdb_build(tmp_path / "largest", model_dir, scenario.urls, "--select", "largest")
    by_query = cvdb_build(tmp_path / "query", model_dir, scenario.urls, "--select", "query")
    assert by_size.code == 0 and by_query.code == 0, by_size.stderr + by_query.stderr
    assert _majority_label(by_size, scenario) == corpus.DISTRACTOR
    assert _majority_label(by_query, scenario) == corpus.TARGET


def _majority_label(run: Run, scenario: Scenario) -> str:
    labels = [scenario.labels.get(row["url"], "?") for row in run.manifest]
    return max(set(labels), key=labels.count)


def test_a_korean_query_is_scored_by_the_multilingual_encoder_and_keeps_the_target(
        tiny_clip: Path, scenario: Scenario, tmp_path: Path) -> None:
    """The tiny CLIP learned English captions only, as real CLIP did. Through its own text tower a
    Korean query matches no group in particular, and the bigger off-topic group wins on size; the
    default `auto` scores it with the distilled multilingual student and keeps the target."""
    korean = corpus.CLASSES[corpus.TARGET].captions_ko[1]
    by_auto = cvdb_build(tmp_path / "auto", tiny_clip, scenario.urls, query=korean)
    by_clip = cvdb_build(tmp_path / "none", tiny_clip, scenario.urls, "--text-model", "none", query=korean)
    assert by_auto.code == 0 and by_clip.code == 0, by_auto.stderr + by_clip.stderr
    assert _majority_label(by_auto, scenario) == corpus.TARGET
    assert _majority_label(by_clip, scenario) == corpus.DISTRACTOR
    assert by_auto.report["query_encoder"] == "multilingual"  # a local folder, by its name
    assert by_clip.report["query_encoder"] == "clip"
    assert "text encoder" in by_auto.stderr


def test_an_english_query_keeps_clips_own_text_tower(query_run: Run) -> None:
    assert query_run.report["query_encoder"] == "clip"
    assert query_run.report["thresholds"]["text_model"] == "auto"


def test_a_text_encoder_that_cannot_be_had_is_a_clear_error(tiny_clip: Path, scenario: Scenario,
                                                              tmp_path: Path) -> None:
    korean = corpus.CLASSES[corpus.TARGET].captions_ko[1]
    run = cvdb_build(tmp_path, tiny_clip, scenario.urls[:20], "--limit", "5", query=korean,
                     settings={"multilingual_text_model": tmp_path / "no-encoder"})
    assert run.code == 1
    said = " ".join(run.stderr.split())
    assert "could not load the text encoder" in said and "--text-model none" in said, said
    assert not run.out.exists()  # the folder it claimed is given up again


def test_nothing_kept_exits_non_zero_and_says_why(tiny_clip: Path, image_server: Any, tmp_path: Path) -> None:
    urls = [image_server.url(p) for p in ("/status/404", "/status/500", "/html")]
    run = cvdb_build(tmp_path, tiny_clip, urls)
    assert run.code == 1
    assert "none of the 3 candidates could be downloaded" in run.stderr
    assert not (run.out / "manifest.jsonl").exists()
    assert run.report["status"] == "failed"


def test_a_build_imports_nothing_of_the_service(tiny_clip: Path, scenario: Scenario, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`cvdb build` runs in one process: Celery, Flask and SQLAlchemy are never imported (start-up)."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # every import is listed on stderr
    run = cvdb_build(tmp_path, tiny_clip, scenario.urls[:30], "--limit", "5")
    assert run.code == 0, run.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in run.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" in imported and "aiohttp" in imported  # the listing works
    assert not imported & {"celery", "flask", "flask_sqlalchemy", "sqlalchemy", "kombu", "redis", "psycopg2"}


def test_a_model_that_cannot_load_fails_before_the_search(tiny_clip: Path, image_server: Any, tmp_path: Path) -> None:
    run = cvdb_build(tmp_path, tiny_clip, [image_server.url("/status/404")], settings={"model": tmp_path / "no-model"})
    said = " ".join(run.stderr.split())
    assert run.code == 1 and "could not load CLIP model" in said and "save_pretrained" in said
    assert "candidates from" not in said  # it said so before searching


def test_a_model_that_fails_while_the_build_runs_loses_nothing(tiny_clip: Path, scenario: Scenario,
                                                               tmp_path: Path) -> None:
    """The weights load in the background: when they cannot, an earlier dataset stays (even with
    --overwrite) and a new folder is given up again."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in tiny_clip.iterdir():
        if item.is_file() and item.name != "model.safetensors":
            shutil.copy(item, broken / item.name)
    first = cvdb_build(tmp_path / "a", tiny_clip, scenario.urls[:30], "--limit", "5")
    assert first.code == 0, first.stderr[-1000:]
    before = {p.name: p.read_bytes() for p in first.out.iterdir() if p.is_file()}
    again = cvdb_build(tmp_path / "a", tiny_clip, scenario.urls[:30], "--limit", "5", "--overwrite",
                       settings={"model": broken})
    assert again.code == 1 and "could not load CLIP model" in " ".join(again.stderr.split())
    assert {p.name: p.read_bytes() for p in first.out.iterdir() if p.is_file()} == before
    fresh = cvdb_build(tmp_path / "b", tiny_clip, scenario.urls[:30], "--limit", "5", settings={"model": broken})
    assert fresh.code == 1 and not fresh.out.exists()


def test_refuses_an_output_outside_the_data_folder(tiny_clip: Path, scenario: Scenario, tmp_path: Path) -> None:
    run = cvdb_build(tmp_path, tiny_clip, scenario.urls[:3], "--out", "/tmp/elsewhere")
    assert run.code == 2 and "not inside the data folder" in run.stderr


def test_default_source_is_naver_end_to_end(tiny_clip: Path, scenario: Scenario, tmp_path: Path) -> None:
    with FakeNaver(image_urls=scenario.urls) as naver:
        run = cvdb_build(tmp_path, tiny_clip, None, "--limit", "100", settings=naver.settings_overrides())
    assert run.code == 0, run.stderr
    assert run.report["source"]["served_by"] == "naver"
    assert {o["url"] for o in run.report["outcomes"]} == set(scenario.urls)
    assert _majority_label(run, scenario) == corpus.TARGET
    assert {row["source"] for row in run.manifest} == {"naver"}
    assert all(row["source_page"] for row in run.manifest)


def test_auto_falls_back_on_a_blocked_page_and_reports_it(tiny_clip: Path, scenario: Scenario, tmp_path: Path) -> None:
    with FakeNaver(image_urls=scenario.urls, mode="blocked") as naver:
        run = cvdb_build(tmp_path, tiny_clip, None, "--source", "auto", settings=naver.settings_overrides())
    assert run.code == 0, run.stderr
    attempts = run.report["source"]["attempts"]
    assert [a["source"] for a in attempts] == ["naver", "naver-api"]
    assert attempts[0]["outcome"] == "failed" and run.report["source"]["served_by"] == "naver-api"


def test_search_prints_candidates_as_json_lines(tiny_clip: Path, scenario: Scenario, tmp_path: Path) -> None:
    with FakeNaver(image_urls=scenario.urls) as naver:
        done = cvdb(tmp_path, tiny_clip, "search", "고양이", "--limit", "5", settings=naver.settings_overrides())
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["url"] for r in rows] == scenario.urls[:5]
    assert {r["source"] for r in rows} == {"naver"}


def test_search_names_the_source_of_a_clear_error(tiny_clip: Path, scenario: Scenario, tmp_path: Path) -> None:
    with FakeNaver(image_urls=scenario.urls, mode="bad_truncated") as naver:
        done = cvdb(tmp_path, tiny_clip, "search", "cat", settings=naver.settings_overrides())
    assert done.returncode == 1
    assert "naver:" in done.stderr and "Traceback" not in done.stderr


def test_help_explains_every_option() -> None:
    done = subprocess.run([CVDB, "build", "--help"], capture_output=True, text=True, timeout=60)
    for option in ("--source", "--urls", "--limit", "--out", "--select", "--model", "--batch-size", "--eps"):
        assert option in done.stdout


def test_demo_builds_a_dataset_through_the_fake_naver(tiny_clip: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CVDB_DATA_ROOT": str(tmp_path / "data")}
    cache = tiny_clip.parent  # the session's trained model: the demo reuses it instead of training
    done = subprocess.run([CVDB, "demo", "--cache", str(cache)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Saved" in done.stdout and "from naver" in done.stderr
    rows = [json.loads(line) for line in (tmp_path / "data" / "demo-sunflower" / "manifest.jsonl").read_text().splitlines()]
    assert rows and {row["query"] for row in rows} == {corpus.TARGET}
