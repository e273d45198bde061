"""The REST API's answers to good and bad requests: the real app, a throwaway Postgres, a real Redis.

No worker runs here: submitted jobs wait in this test's own Redis db, which is emptied afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import flask_migrate
import pytest
import redis
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings

from api import create_app, signing
from common.config import Settings
from common.db import db
from common.models import Job
from service_harness import create_database, drop_database, free_redis_db
from workers.broker import waiting_task_ids

TOKEN = "test-token-" + uuid.uuid4().hex


def make_app(tmp: Path, database_url: str, redis_url: str, **overrides: Any) -> Flask:
    config = Settings(data_root=tmp / "data", redis_url=redis_url, database_url=database_url, **overrides)
    return create_app({"CVDB_SETTINGS": config, "SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True})


@pytest.fixture(scope="module")
def backing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    tmp, database_url, redis_url = tmp_path_factory.mktemp("api"), create_database(), free_redis_db()
    app = make_app(tmp, database_url, redis_url)
    with app.app_context():
        flask_migrate.upgrade()
        db.engine.dispose()
    try:
        yield tmp, database_url, redis_url
    finally:
        redis.Redis.from_url(redis_url).flushdb()
        drop_database(database_url)


@pytest.fixture(scope="module")
def app(backing: tuple[Path, str, str]) -> Iterator[Flask]:
    app = make_app(*backing)
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def app_job_task_ids(client: FlaskClient, job_id: str) -> list[dict[str, str]]:
    with client.application.app_context():
        job = db.session.get(Job, job_id)
        assert job is not None
        return list(job.task_ids)


def finished_job(app: Flask, status: str = "done", output: str | None = None, original_route: bool = False) -> str:
    with app.app_context():
        job = Job(query="cat", request_limit=5, out_dir=output or f"out-{uuid.uuid4().hex[:6]}", source="naver",
                  status=status, options={}, log="", task_ids=[], original_route=original_route)
        db.session.add(job)
        db.session.commit()
        return job.id


def assert_error(response: Any, status: int, error: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.data
    body = response.get_json()
    assert set(body) == {"error", "detail"} and body["detail"], body
    if error:
        assert body["error"] == error
    return dict(body)


def test_submit_answers_202_with_links_and_queues_the_search(client: FlaskClient, backing: tuple[Path, str, str]) -> None:
    response = client.post("/api/jobs", json={"query": "  고양이 ", "limit": 7, "select": "largest"})
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued" and body["links"]["self"] == f"/api/jobs/{body['id']}"
    job = client.get(f"/api/jobs/{body['id']}").get_json()
    assert job["query"] == "고양이" and job["limit"] == 7 and job["options"] == {"select": "largest"}
    assert job["output"].startswith("dataset-") and job["progress"]["candidates"] == 0
    queued = redis.Redis.from_url(backing[2]).lrange("cpu", 0, -1)
    assert any(body["id"].encode() in message for message in queued)
    task_ids = {t["id"] for t in app_job_task_ids(client, body["id"])}
    assert task_ids and task_ids <= waiting_task_ids(backing[2])  # the sweep sees it as waiting, not lost


def test_the_original_run_call_gets_a_folder_of_its_own_and_a_job_id(client: FlaskClient) -> None:
    # The original page's own body: its default out_dir is data/naver_collected, a path under its data folder.
    response = client.post("/api/run", json={"query": "cat", "limit": 3, "out_dir": "data/naver_collected"})
    assert response.status_code == 202
    body = response.get_json()
    assert body["job_id"] == body["id"] and body["status"] == "running"
    job = client.get(f"/api/jobs/{body['job_id']}").get_json()
    assert job["out_dir"] == job["output"] == f"naver_collected-{body['id'][:8]}"
    # queued, but the original knew only running/done/failed/cancelled and polls while it is `running`
    assert job["status"] == "running" and job["stage"] is None and not job["final"]
    assert job["limit"] == 3 and job["started_at"] is None and "queued:" in job["log"]


@pytest.mark.parametrize("out_dir, output", [
    ("data/naver_collected/my-run", "naver_collected-my-run"),
    ("data/naver_collected/", "naver_collected"),
    ("data\\win\\run", "win-run"),
    ("./data/./x", "x"),
    ("cats-original", "cats-original"),
    ("other/place", "other-place"),
])
def test_original_out_dirs_map_inside_the_data_folder(client: FlaskClient, out_dir: str, output: str) -> None:
    body = client.post("/api/run", json={"query": "cat", "limit": 3, "out_dir": out_dir}).get_json()
    assert client.get(f"/api/jobs/{body['job_id']}").get_json()["output"] == f"{output}-{body['id'][:8]}"


@pytest.mark.parametrize("body, words", [
    ({"query": "cat", "out_dir": "../../etc"}, ["out_dir", "'..'"]),
    ({"query": "cat", "out_dir": "/etc/cron.d"}, ["out_dir", "absolute"]),
    ({"query": "cat", "out_dir": "C:\\Users\\x"}, ["out_dir", "absolute"]),
    ({"query": "cat", "out_dir": "data/.hidden"}, ["out_dir", ".hidden"]),
    ({"query": "cat", "out_dir": "data/" + "x" * 70}, ["out_dir", "too long"]),
    ({"query": "cat", "out_dir": 5}, ["out_dir", "folder path"]),
    ({"query": "cat", "out_dir": "a", "output": "b"}, ["not both"]),
    ({"query": "", "out_dir": "data/naver_collected"}, ["query"]),
    ({"query": "cat", "limit": 0}, ["limit"]),
])
def test_the_original_run_call_refuses_with_a_readable_detail(client: FlaskClient, body: dict[str, Any],
                                                              words: list[str]) -> None:
    response = client.post("/api/run", json=body)
    assert response.status_code == 422
    answer = response.get_json()
    # The original's page shows `detail` as a string; the field list stays under `errors`.
    assert isinstance(answer["detail"], str) and all(w in answer["detail"] for w in words), answer
    assert answer["errors"] and all(set(e) == {"field", "message"} for e in answer["errors"])


def test_an_original_job_reads_running_while_it_is_cancelled(client: FlaskClient) -> None:
    job_id = client.post("/api/run", json={"query": "cat", "out_dir": "data/c"}).get_json()["job_id"]
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 202
    job = client.get(f"/api/jobs/{job_id}").get_json()  # cancelling (no worker here): still `running` to it
    assert job["status"] == "running" and job["cancel_requested"] and not job["final"]
    listed = {j["id"]: j for j in client.get("/api/jobs?page=1&per_page=100").get_json()["jobs"]}
    assert listed[job_id]["status"] == "running" and listed[job_id]["out_dir"] == job["out_dir"]
    # A job submitted through our own route keeps its exact status.
    own = client.post("/api/jobs", json={"query": "cat"}).get_json()["id"]
    assert client.get(f"/api/jobs/{own}").get_json()["status"] == "queued"


@pytest.mark.parametrize("body, field", [
    ({}, "body"),  # neither query nor queries
    ({"query": ""}, "query"),
    ({"query": "   "}, "query"),
    ({"query": "a\x00b"}, "query"),
    ({"query": "x" * 201}, "query"),
    ({"query": "cat", "limit": "many"}, "limit"),
    ({"query": "cat", "limit": 0}, "limit"),
    ({"query": "cat", "limit": 10**9}, "limit"),
    ({"query": "cat", "output": "../escape"}, "output"),
    ({"query": "cat", "output": "a/b"}, "output"),
    ({"query": "cat", "output": ".hidden"}, "output"),
    ({"query": "cat", "source": "google"}, "source"),
    ({"query": "cat", "eps": 5}, "eps"),
    ({"query": "cat", "source": "urls"}, "body"),
    ({"query": "cat", "source": "urls", "urls": ["file:///etc/passwd"]}, "urls"),
    ({"query": "cat", "unknown": 1}, "unknown"),
    ({"query": ["cat"]}, "query"),
    ({"queries": ["cat", "dog"], "like": ["http://x/cat.jpg"]}, "body"),
    ({"queries": ["cat", "cat"]}, "queries"),
    ({"query": "cat", "queries": ["dog"]}, "body"),
    ({"query": "cat", "split": [0.5, 0.2]}, "split"),
    ({"query": "cat", "exclude": [""]}, "exclude"),
    ({"query": "cat", "like": ["file:///etc/passwd"]}, "like"),
])
def test_bad_submissions_get_422_naming_the_field(client: FlaskClient, body: dict[str, Any], field: str) -> None:
    detail = assert_error(client.post("/api/jobs", json=body), 422, "validation_error")["detail"]
    assert any(d["field"].startswith(field) for d in detail), detail
    assert not any(d["message"].startswith("Value error") for d in detail), detail


def test_malformed_bodies_get_clear_4xx(client: FlaskClient) -> None:
    assert_error(client.post("/api/jobs", data="query=cat"), 415, "unsupported_media_type")
    assert_error(client.post("/api/jobs", data="{not json", content_type="application/json"), 400, "bad_request")
    assert_error(client.post("/api/jobs", json=["cat"]), 400, "bad_request")
    assert_error(client.post("/api/jobs", data=b"x" * 20000, content_type="application/json"), 413)


def test_a_picture_to_search_by_may_be_larger_than_a_json_body_but_not_unbounded(client: FlaskClient) -> None:
    unknown = "/api/jobs/0b7f0c2e-2f43-4d6c-9a51-3f0c1d2e4a5b/search"
    assert_error(client.post(unknown, data=b"\xff" * 100_000, content_type="image/jpeg"), 404, "not_found")
    assert_error(client.post(unknown, data=b"\xff" * (6 * 1024 * 1024), content_type="image/jpeg"), 413)
    assert_error(client.post("/api/jobs", data=b"x" * 100_000, content_type="application/json"), 413)
    assert_error(client.get(unknown, query_string={"q": ""}), 400, "bad_request")


def test_an_output_in_use_is_a_conflict(client: FlaskClient, app: Flask, backing: tuple[Path, str, str]) -> None:
    (backing[0] / "data" / "taken").mkdir(parents=True)
    (backing[0] / "data" / "taken" / "manifest.jsonl").write_text("{}\n")
    assert_error(client.post("/api/jobs", json={"query": "cat", "output": "taken"}), 409, "conflict")
    assert client.post("/api/jobs", json={"query": "cat", "output": "busy"}).status_code == 202
    assert_error(client.post("/api/jobs", json={"query": "dog", "output": "busy"}), 409, "conflict")


@pytest.mark.parametrize("path", [
    "/api/jobs/not-a-uuid", f"/api/jobs/{uuid.uuid4()}", f"/api/jobs/{uuid.uuid4()}/log",
    f"/api/jobs/{uuid.uuid4()}/images", f"/api/jobs/{uuid.uuid4()}/archive",
])
def test_unknown_jobs_are_404(client: FlaskClient, path: str) -> None:
    assert_error(client.get(path), 404, "not_found")


@pytest.mark.parametrize("name", ["..%2f..%2fetc%2fpasswd", "../../etc/passwd", "img_0001.jpg%00.png",
                                  "manifest.jsonl", "img_1.jpg", "%2e%2e/report.json"])
def test_image_names_cannot_leave_the_dataset(client: FlaskClient, app: Flask, name: str) -> None:
    job_id = finished_job(app)
    response = client.get(f"/api/jobs/{job_id}/images/{name}")
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"


def test_results_of_an_unfinished_job_are_a_conflict(client: FlaskClient, app: Flask) -> None:
    job_id = finished_job(app, status="running")
    assert_error(client.get(f"/api/jobs/{job_id}/archive"), 409, "conflict")
    assert_error(client.get(f"/api/jobs/{job_id}/manifest"), 409, "conflict")
    assert client.get(f"/api/jobs/{job_id}/images").get_json()["images"] == []
    assert_error(client.delete(f"/api/jobs/{job_id}"), 409, "conflict")


def test_cancel_and_delete_follow_the_job_state(client: FlaskClient, app: Flask, backing: tuple[Path, str, str]) -> None:
    done = finished_job(app, output="finished-set")
    assert_error(client.post(f"/api/jobs/{done}/cancel"), 409, "conflict")
    folder = backing[0] / "data" / "finished-set"
    folder.mkdir(parents=True)
    (folder / "img_0001.jpg").write_bytes(b"jpeg")
    (folder / "manifest.jsonl").write_text('{"file": "img_0001.jpg"}\n')
    (folder / ".cvdb-owner").write_text(f"{done}\n")  # what the job's search step writes
    assert client.delete(f"/api/jobs/{done}").status_code == 204
    assert not folder.exists()
    assert_error(client.get(f"/api/jobs/{done}"), 404)
    queued = client.post("/api/jobs", json={"query": "cat"}).get_json()["id"]
    cancelled = client.post(f"/api/jobs/{queued}/cancel")
    assert cancelled.status_code == 202 and cancelled.get_json()["status"] == "cancelling"


def test_an_original_jobs_images_are_listed_by_name_and_its_delete_keeps_them(
        client: FlaskClient, app: Flask, backing: tuple[Path, str, str]) -> None:
    done = finished_job(app, output="original-set", original_route=True)
    folder = backing[0] / "data" / "original-set"
    folder.mkdir(parents=True)
    for name in ("img_0001.jpg", "img_0002.jpg"):
        (folder / name).write_bytes(b"jpeg")
    (folder / "manifest.jsonl").write_text('{"file": "img_0001.jpg"}\n{"file": "img_0002.jpg"}\n')
    (folder / ".cvdb-owner").write_text(f"{done}\n")
    images = client.get(f"/api/jobs/{done}/images").get_json()
    assert images["files"] == ["img_0001.jpg", "img_0002.jpg"] and images["job_id"] == done
    assert images["out_dir"] == "original-set" and [i["file"] for i in images["images"]] == images["files"]
    assert client.get(f"/api/jobs/{done}/images/{images['files'][0]}").data == b"jpeg"
    # The original's page asks "delete this entry? (saved images are not deleted)": so it is.
    assert client.delete(f"/api/jobs/{done}").status_code == 204
    assert client.get(f"/api/jobs/{done}").status_code == 404
    assert sorted(p.name for p in folder.iterdir()) == [".cvdb-owner", "img_0001.jpg", "img_0002.jpg", "manifest.jsonl"]


def test_clear_removes_only_finished_jobs_and_keeps_their_files(client: FlaskClient, app: Flask,
                                                                backing: tuple[Path, str, str]) -> None:
    kept_files = backing[0] / "data" / "cleared-set"
    kept_files.mkdir(parents=True)
    (kept_files / "manifest.jsonl").write_text("{}\n")
    finished = [finished_job(app, s, output=o) for s, o in (("done", "cleared-set"), ("failed", None))]
    running = finished_job(app, "running")
    assert client.post("/api/jobs/clear").get_json()["deleted"] >= 2
    for job_id in finished:
        assert client.get(f"/api/jobs/{job_id}").status_code == 404
    assert client.get(f"/api/jobs/{running}").status_code == 200
    assert kept_files.exists()


def test_listing_pages_and_filters(client: FlaskClient, app: Flask) -> None:
    ids = [finished_job(app, "failed") for _ in range(3)]
    page = client.get("/api/jobs?status=failed&per_page=2").get_json()
    assert page["per_page"] == 2 and len(page["jobs"]) == 2 and page["total"] >= 3
    assert all(j["status"] == "failed" for j in page["jobs"])
    assert page["jobs"][0]["id"] == ids[-1]  # newest first
    assert_error(client.get("/api/jobs?status=exploded"), 400, "bad_request")
    assert_error(client.get("/api/jobs?page=0"), 400, "bad_request")
    assert_error(client.get("/api/jobs?per_page=abc"), 400, "bad_request")


def test_submissions_beyond_the_active_job_cap_get_429(backing: tuple[Path, str, str]) -> None:
    app = make_app(*backing, max_active_jobs=1)
    client = app.test_client()
    client.post("/api/jobs", json={"query": "cat"})  # at least one job is active from here on
    assert_error(client.post("/api/jobs", json={"query": "cat"}), 429, "too_many_requests")
    with app.app_context():
        db.engine.dispose()


def test_reason_codes_are_explained_with_their_stage(client: FlaskClient) -> None:
    reasons = client.get("/api/reasons").get_json()["reasons"]
    assert reasons["blurry"]["stage"] == "quality" and "Laplacian" in reasons["blurry"]["description"]
    assert reasons["near_duplicate_phash"]["stage"] == "duplicates"
    assert reasons["worker_lost"]["stage"] == "download" and reasons["other_cluster"]["stage"] == "selection"
    assert reasons["http_<status>"]["stage"] == "download"


def test_tokens_protect_the_api_when_configured(backing: tuple[Path, str, str]) -> None:
    app = make_app(*backing, api_tokens=f"other,{TOKEN}")
    client = app.test_client()
    assert_error(client.get("/api/jobs"), 401, "unauthorized")
    assert_error(client.get("/api/jobs", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    assert client.get("/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    document = client.get("/api/openapi.json").get_json()
    assert document["security"] == [{"bearer": []}]
    with app.app_context():
        db.engine.dispose()


def test_signed_links_open_result_files_without_the_token(backing: tuple[Path, str, str]) -> None:
    app = make_app(*backing, api_tokens=TOKEN)
    client, auth = app.test_client(), {"Authorization": f"Bearer {TOKEN}"}
    job_id = finished_job(app, output="signed-set")
    folder = backing[0] / "data" / "signed-set"
    folder.mkdir(parents=True)
    (folder / "img_0001.jpg").write_bytes(b"\xff\xd8jpeg")
    (folder / "report.json").write_text("{}")
    (folder / "manifest.jsonl").write_text('{"file": "img_0001.jpg"}\n')
    image_url = client.get(f"/api/jobs/{job_id}/images", headers=auth).get_json()["images"][0]["url"]
    archive_url = client.get(f"/api/jobs/{job_id}", headers=auth).get_json()["links"]["archive"]
    assert "sig=" in image_url and "exp=" in archive_url
    assert client.get(image_url).data == b"\xff\xd8jpeg"  # no Authorization header
    assert client.get(archive_url).status_code == 200
    path, _, query = image_url.partition("?")
    assert_error(client.get(f"/api/jobs/{job_id}/manifest?{query}"), 401)  # signed for another path
    assert_error(client.get(f"{path}?{query.replace('sig=', 'sig=0')}"), 401)  # tampered
    assert_error(client.get(f"{path}?exp=1&{query.split('&')[1]}"), 401)  # expired
    assert_error(client.get(f"/api/jobs/{job_id}/log?{query}"), 401)  # never for other routes
    with app.app_context():
        db.engine.dispose()


def _result_folder(app: Flask, backing: tuple[Path, str, str], output: str) -> str:
    """A finished job whose folder holds one image, a report and a manifest."""
    job_id = finished_job(app, output=output)
    folder = backing[0] / "data" / output
    folder.mkdir(parents=True)
    (folder / "img_0001.jpg").write_bytes(b"\xff\xd8jpeg")
    (folder / "report.json").write_text("{}")
    (folder / "manifest.jsonl").write_text('{"file": "img_0001.jpg"}\n')
    return job_id


def test_an_expired_link_with_a_valid_signature_is_refused(backing: tuple[Path, str, str]) -> None:
    """The signature covers `exp`, so only the expiry check itself can refuse this link."""
    app = make_app(*backing, api_tokens=TOKEN)
    client = app.test_client()
    path = f"/api/jobs/{_result_folder(app, backing, 'expired-set')}/images/img_0001.jpg"

    def signed(expires: int) -> str:
        return f"{path}?exp={expires}&sig={signing._signature(path, expires, [TOKEN])}"

    now = int(time.time())
    assert client.get(signed(now + 600)).data == b"\xff\xd8jpeg"  # the signature is built the API's way
    assert_error(client.get(signed(now - 1)), 401)
    assert_error(client.get(signed(now - 86_400)), 401)
    with app.app_context():
        db.engine.dispose()


def test_a_handed_out_link_lives_one_hour(backing: tuple[Path, str, str]) -> None:
    app = make_app(*backing, api_tokens=TOKEN)
    client, auth = app.test_client(), {"Authorization": f"Bearer {TOKEN}"}
    job_id = _result_folder(app, backing, "one-hour-set")
    before = int(time.time())
    image_url = client.get(f"/api/jobs/{job_id}/images", headers=auth).get_json()["images"][0]["url"]
    links = client.get(f"/api/jobs/{job_id}", headers=auth).get_json()["links"]
    after = int(time.time())
    for url in (image_url, links["archive"], links["manifest"]):
        expires = int(parse_qs(urlsplit(url).query)["exp"][0])
        assert before + 3600 <= expires <= after + 3600, url
    with app.app_context():
        db.engine.dispose()


def test_openapi_document_describes_every_route(client: FlaskClient, app: Flask) -> None:
    document = client.get("/api/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    routes = {(rule.rule, method.lower()) for rule in app.url_map.iter_rules() for method in rule.methods or ()
              if rule.rule.startswith("/api/") and rule.rule != "/api/openapi.json" and method not in ("HEAD", "OPTIONS")}
    documented = {(path.replace("{job_id}", "<job_id>").replace("{name}", "<path:name>"), method)
                  for path, methods in document["paths"].items() for method in methods}
    assert routes <= documented
    assert document["components"]["schemas"]["JobRequest"]["properties"]["limit"]["maximum"] == 1000


def test_fuzzing_the_openapi_document_finds_no_server_error(app: Flask) -> None:
    """Generated requests for every documented operation: any answer but a 5xx is acceptable."""
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case: Any) -> None:
            response = case.call()
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])

        no_server_error()
