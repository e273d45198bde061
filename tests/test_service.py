"""The service end to end: real API, Redis, Postgres, Celery worker processes, the fake Naver.

One `cvdb serve` runs for the whole module (see conftest `service`): two CPU workers with one
process each, the GPU worker on the CPU, beat and Flower.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests

from common.config import Settings
from common.devkit import corpus
from common.devkit.fake_naver import FakeNaver
from common.devkit.image_server import ImageServer
from common.devkit.scenario import Scenario
from conftest import STALLED_QUERY, service_settings
from service_harness import CVDB, Service, wait_for

pytestmark = pytest.mark.slow


def files_by_hash(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("img_*.jpg"))}


def job_dir(service: Service, job: dict[str, Any]) -> Path:
    return service.data_root / job["output"]


@pytest.fixture(scope="module")
def done_job(service: Service) -> dict[str, Any]:
    job_id = service.submit(query=corpus.TARGET, limit=100, output="sunflowers")
    return service.wait_status(job_id, {"done", "failed", "cancelled"})


def test_job_runs_through_both_queues_to_done(service: Service, done_job: dict[str, Any]) -> None:
    assert done_job["status"] == "done", done_job["error"]
    assert done_job["count"] > 0 and done_job["progress"]["kept"] == done_job["count"]
    assert done_job["fetch_chunks"]["done"] == done_job["fetch_chunks"]["total"] > 1
    assert done_job["drop_counts"] and done_job["result"]["chosen_cluster"] is not None
    log = service.api("GET", f"/api/jobs/{done_job['id']}/log").json()["log"]
    for step in ("searching naver", "fetching in", "all chunks fetched; embedding", "done: saved"):
        assert step in log
    assert not (job_dir(service, done_job) / ".staging").exists()
    described = service.api("GET", "/api/reasons").json()["reasons"]
    for reason in done_job["drop_counts"]:  # every drop the job made is explained by the API
        assert ("http_<status>" if reason.startswith("http_") else reason) in described, reason


def test_files_equal_what_cvdb_build_makes(service: Service, done_job: dict[str, Any], tmp_path: Path,
                                           tiny_clip: Path, fake_naver: FakeNaver) -> None:
    env = {**os.environ, "CVDB_DATA_ROOT": str(tmp_path)}
    env.update({f"CVDB_{k.upper()}": str(v) for k, v in service_settings(tiny_clip, fake_naver).items()})
    done = subprocess.run([CVDB, "build", corpus.TARGET, "--limit", "100", "--out", str(tmp_path / "local")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    local, served = tmp_path / "local", job_dir(service, done_job)
    assert files_by_hash(served) == files_by_hash(local)
    local_rows = [json.loads(line) for line in (local / "manifest.jsonl").read_text().splitlines()]
    served_rows = [json.loads(line) for line in (served / "manifest.jsonl").read_text().splitlines()]
    assert [(r["file"], r["url"], r["sha256"]) for r in served_rows] == [(r["file"], r["url"], r["sha256"]) for r in local_rows]


def test_results_are_served_over_the_api(service: Service, done_job: dict[str, Any]) -> None:
    job_id, folder = done_job["id"], job_dir(service, done_job)
    images = service.api("GET", f"/api/jobs/{job_id}/images").json()
    assert images["count"] == done_job["count"] == len(images["images"])
    first = images["images"][0]
    assert first["manifest"]["file"] == first["file"] and "query_similarity" in first["manifest"]
    picture = service.api("GET", first["url"])
    assert picture.status_code == 200 and picture.headers["Content-Type"] == "image/jpeg"
    assert picture.content == (folder / first["file"]).read_bytes()
    manifest = service.api("GET", f"/api/jobs/{job_id}/manifest")
    assert manifest.content == (folder / "manifest.jsonl").read_bytes()
    archive = zipfile.ZipFile(io.BytesIO(service.api("GET", f"/api/jobs/{job_id}/archive").content))
    names = archive.namelist()
    assert names[-1] == "sunflowers/manifest.jsonl" and "sunflowers/report.json" in names
    for name in names:
        assert archive.read(name) == (folder / Path(name).name).read_bytes()


def test_two_jobs_at_once_both_finish_on_both_cpu_workers(service: Service) -> None:
    ids = [service.submit(query=corpus.TARGET, limit=40), service.submit(query="해바라기", limit=40)]
    jobs = [service.wait_status(job_id, {"done", "failed", "cancelled"}) for job_id in ids]
    assert [j["status"] for j in jobs] == ["done", "done"], [j["error"] for j in jobs]
    logs = "".join(service.api("GET", f"/api/jobs/{j}/log").json()["log"] for j in ids)
    workers = {line.split("(worker ")[1].split("@")[0] for line in logs.splitlines() if "(worker " in line}
    assert workers == {"cpu-1", "cpu-2"}
    # The Korean query was scored by the multilingual encoder in the GPU worker, the English by CLIP's own.
    reports = [service.api("GET", f"/api/jobs/{j}/report").json() for j in ids]
    assert [r["query_encoder"] for r in reports] == ["clip", "multilingual"]
    assert reports[0]["chosen_cluster"] == reports[1]["chosen_cluster"]  # the same group, whichever language


def slow_urls(image_server: ImageServer, n: int, seconds: float, tag: str) -> list[str]:
    return [image_server.url(f"/slow/{seconds}?{tag}={i}") for i in range(n)]


def test_cancel_during_fetch_stops_within_seconds(service: Service, image_server: ImageServer) -> None:
    job_id = service.submit(query="slow", limit=10, source="urls",
                            urls=slow_urls(image_server, 60, 25, "cancel-fetch"), output="cancel-fetch")
    wait_for(lambda: service.job(job_id)["stage"] == "fetch" and service.active_tasks(), 60, "fetch to start")
    other = service.submit(query=corpus.TARGET, limit=20, output="beside-the-cancel")
    assert service.api("POST", f"/api/jobs/{job_id}/cancel").status_code == 202
    job = service.wait_status(job_id, {"cancelled"}, timeout_s=8)
    assert job["stage"] == "fetch"
    assert service.wait_status(other, {"done", "failed", "cancelled"})["status"] == "done"  # untouched
    wait_for(lambda: not service.active_tasks(), 30, "the workers to be idle")
    job = service.job(job_id)
    assert job["status"] == "cancelled" and "embedding" not in service.api("GET", f"/api/jobs/{job_id}/log").text
    assert not (service.data_root / "cancel-fetch").exists()


def test_cancel_while_the_job_waits_for_embedding(service: Service) -> None:
    gpu = service.worker_pid("gpu")
    os.kill(gpu, signal.SIGSTOP)  # the GPU worker is busy elsewhere: the job waits at embed
    try:
        job_id = service.submit(query=corpus.TARGET, limit=30, output="cancel-embed")
        wait_for(lambda: service.job(job_id)["stage"] == "embed", 120, "the job to reach embed")
        assert service.api("POST", f"/api/jobs/{job_id}/cancel").status_code == 202
        service.wait_status(job_id, {"cancelled"}, timeout_s=10)
    finally:
        os.kill(gpu, signal.SIGCONT)
    wait_for(lambda: "gpu@" in "".join(service.nodes()), 30, "the GPU worker to answer again")
    wait_for(lambda: not service.active_tasks(), 30, "the workers to be idle")
    job = service.job(job_id)
    assert job["status"] == "cancelled" and job["stage"] == "embed"
    assert not (service.data_root / "cancel-embed").exists()


def test_a_killed_worker_process_does_not_lose_or_duplicate_work(service: Service, scenario: Scenario,
                                                                 image_server: ImageServer) -> None:
    urls = list(scenario.urls)
    for i in range(0, len(urls), 10):  # every chunk of 20 waits on slow downloads
        urls.insert(i, image_server.url(f"/slow/4?kill={i}"))
    job_id = service.submit(query=corpus.TARGET, limit=100, source="urls", urls=urls, output="killed")
    running = wait_for(lambda: [t for t in service.active_tasks() if t["name"] == "workers.tasks.fetch_chunk"],
                       60, "a fetch chunk to run")
    os.kill(int(running[0]["worker_pid"]), signal.SIGKILL)
    job = service.wait_status(job_id, {"done", "failed", "cancelled"})
    assert job["status"] == "done", job["error"]
    log = service.api("GET", f"/api/jobs/{job_id}/log").json()["log"]
    chunk = running[0]["args"][1]
    assert log.count(f"chunk {chunk}: ") == 1  # finished once, by the redelivered task
    rows = [json.loads(line) for line in (service.data_root / "killed" / "manifest.jsonl").read_text().splitlines()]
    assert len({r["source_sha256"] for r in rows}) == len(rows) == job["count"]
    assert len(list((service.data_root / "killed").glob("img_*.jpg"))) == len(rows)


def test_cancel_interrupts_a_running_task_that_reads_no_cancel_flag(service: Service, fake_naver: FakeNaver) -> None:
    """A search hung inside one answer of Naver checks no flag: only the revoke's SIGUSR1 stops it
    (the answer would run to the 30 s total timeout, then be retried)."""
    job_id = service.submit(query=STALLED_QUERY, limit=10, output="cancel-hung-search")

    def searching() -> list[dict[str, Any]]:
        return [t for t in service.active_tasks() if t["name"] == "workers.tasks.search" and job_id in t["args"]]

    wait_for(searching, 60, "the search to start")
    wait_for(lambda: any(h.query.get("query") == STALLED_QUERY for h in fake_naver.hits), 30, "the search to hang")
    assert service.api("POST", f"/api/jobs/{job_id}/cancel").status_code == 202
    wait_for(lambda: not searching(), 20, "the revoke to interrupt the hung search")
    job = service.wait_status(job_id, {"cancelled"}, timeout_s=10)
    assert job["stage"] == "search" and job["progress"]["candidates"] == 0
    assert not (service.data_root / "cancel-hung-search" / "manifest.jsonl").exists()


def test_a_chunk_that_kills_its_worker_every_time_is_given_up_and_the_job_finishes(
        service: Service, scenario: Scenario, image_server: ImageServer) -> None:
    limit = Settings().max_chunk_attempts  # the service runs with the default
    chunk_size = int(service.env["CVDB_FETCH_CHUNK_SIZE"])
    # Chunk 0 holds only slow URLs, so it is still running whenever the test looks for it.
    doomed = slow_urls(image_server, chunk_size, 30, "doomed")
    job_id = service.submit(query=corpus.TARGET, limit=100, source="urls", urls=doomed + list(scenario.urls),
                            output="given-up")

    def chunk_zero() -> list[dict[str, Any]]:
        return [t for t in service.active_tasks() if t["name"] == "workers.tasks.fetch_chunk" and t["args"] == [job_id, 0]]

    for _ in range(limit):  # the test plays a picture that crashes whichever worker fetches it
        pid = int(wait_for(chunk_zero, 60, "chunk 0 to run")[0]["worker_pid"])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(int(t["worker_pid"]) == pid for t in chunk_zero()), 30, "the killed process to go")
    job = service.wait_status(job_id, {"done", "failed", "cancelled"})
    assert job["status"] == "done", job["error"]
    assert job["drop_counts"].get("worker_lost") == chunk_size and job["count"] > 0
    log = service.api("GET", f"/api/jobs/{job_id}/log").json()["log"]
    assert f"chunk 0 given up after {limit} attempts" in log
    outcomes = {o["url"]: o for o in json.loads((service.data_root / "given-up" / "report.json").read_text())["outcomes"]}
    assert {outcomes[url]["reason"] for url in doomed} == {"worker_lost"}


def test_flower_needs_its_password_and_shows_both_queues(service: Service) -> None:
    url = f"http://127.0.0.1:{service.flower_port}"
    wait_for(lambda: _get(f"{url}/api/workers?refresh=1", service.flower_auth), 60, "Flower to answer")
    assert requests.get(f"{url}/api/workers", timeout=10).status_code == 401
    workers = requests.get(f"{url}/api/workers?refresh=1", auth=service.flower_auth, timeout=30).json()
    queues = {q["name"] for info in workers.values() for q in info.get("active_queues", [])}
    assert queues == {"cpu", "gpu"}


def _get(url: str, auth: tuple[str, str]) -> bool:
    try:
        return requests.get(url, auth=auth, timeout=10).status_code == 200
    except requests.RequestException:
        return False


def test_a_job_of_several_classes_is_built_served_and_archived_as_cvdb_build_makes_it(
    service: Service, scenario: Scenario, tmp_path: Path, tiny_clip: Path, fake_naver: FakeNaver
) -> None:
    from test_classes_e2e import CLASSES, labelled_list

    lines, contested = labelled_list(scenario)
    job_id = service.submit(queries=list(CLASSES), source="urls", urls=lines, limit=20, split=[0.6, 0.2, 0.2],
                            output="classes")
    job = service.wait_status(job_id, {"done", "failed", "cancelled"})
    assert job["status"] == "done", job["error"]
    assert job["queries"] == list(CLASSES) and job["query"] == ", ".join(CLASSES)
    assert [c["label"] for c in job["classes"]] == list(CLASSES)
    assert sum(c["kept"] for c in job["classes"]) == job["count"]
    assert all(c["kept"] >= 5 and c["accepted"] <= c["candidates"] for c in job["classes"]), job["classes"]
    assert [c["label"] for c in job["result"]["classes"]] == list(CLASSES)

    images = service.api("GET", f"/api/jobs/{job_id}/images").json()["images"]
    assert {i["label"] for i in images} == set(CLASSES) and {i["split"] for i in images} == {"train", "val", "test"}
    assert [i["label"] for i in images if i["manifest"]["url"] == contested] == [corpus.TARGET]
    first = images[0]
    assert first["file"].count("/") == 2
    served = service.api("GET", first["url"])
    assert served.status_code == 200 and served.content == (job_dir(service, job) / first["file"]).read_bytes()

    archive = zipfile.ZipFile(io.BytesIO(service.api("GET", f"/api/jobs/{job_id}/archive").content))
    names = set(archive.namelist())
    assert {f"classes/{i['file']}" for i in images} | {"classes/classes.json", "classes/manifest.jsonl"} <= names

    listing = tmp_path / "labelled.tsv"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**os.environ, "CVDB_DATA_ROOT": str(tmp_path)}
    env.update({f"CVDB_{k.upper()}": str(v) for k, v in service_settings(tiny_clip, fake_naver).items()})
    done = subprocess.run([CVDB, "build", "--urls", str(listing), "--limit", "20", "--split", "0.6,0.2,0.2",
                           "--out", str(tmp_path / "local")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    local = {p.relative_to(tmp_path / "local").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in (tmp_path / "local").rglob("img_*.jpg")}
    assert {i["file"]: i["manifest"]["sha256"] for i in images} == local


def test_a_steered_job_keeps_what_its_examples_show_and_its_dataset_can_be_searched(
    service: Service, scenario: Scenario
) -> None:
    from test_steer_e2e import VAGUE, targets

    job_id = service.submit(query=VAGUE, like=targets(scenario, 3), exclude=[corpus.DISTRACTOR], limit=30,
                            output="steered")
    job = service.wait_status(job_id, {"done", "failed", "cancelled"})
    assert job["status"] == "done", job["error"]
    rows = [json.loads(line) for line in (job_dir(service, job) / "manifest.jsonl").read_text().splitlines()]
    assert {scenario.labels.get(row["url"]) for row in rows} == {corpus.TARGET}
    assert job["drop_counts"].get("excluded", 0) >= 30  # the red apples, by the negative prompt

    hits = service.api("GET", f"/api/jobs/{job_id}/search", params={"q": corpus.TARGET, "top": 3}).json()["hits"]
    assert len(hits) == 3 and [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert service.api("GET", hits[0]["url"]).status_code == 200
    picture = (job_dir(service, job) / rows[-1]["file"]).read_bytes()
    by_picture = service.api("POST", f"/api/jobs/{job_id}/search", data=picture,
                             headers={"Content-Type": "image/jpeg"}).json()["hits"]
    assert by_picture[0]["file"] == rows[-1]["file"] and by_picture[0]["score"] > 0.99
    assert service.api("POST", f"/api/jobs/{job_id}/search", data=b"not a picture",
                       headers={"Content-Type": "image/jpeg"}).status_code == 409
    assert service.api("POST", f"/api/jobs/{job_id}/search", json={"q": "x"}).status_code == 415
    assert service.api("GET", f"/api/jobs/{job_id}/search", params={"q": ""}).status_code == 400
