"""Requests that used to make a 500, and the open API's guards against other web sites: the real
app against a throwaway database; the outage test stops and starts a Postgres server of its own."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import flask_migrate
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from common import serve
from common.config import Settings
from common.db import db
from common.models import Job
from common.pipeline.report import build_report
from pg_server import PostgresServer, PostgresUnavailable, find_bindir
from service_harness import create_database, drop_database, free_redis_db

TOKEN = "hardening-" + uuid.uuid4().hex


def make_app(tmp: Path, database_url: str, redis_url: str, **overrides: Any) -> Flask:
    config = Settings(data_root=tmp / "data", redis_url=redis_url, database_url=database_url, **overrides)
    return create_app({"CVDB_SETTINGS": config, "SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True})


def migrate(app: Flask) -> None:
    with app.app_context():
        flask_migrate.upgrade()


def dispose(app: Flask) -> None:
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def backing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    tmp, database_url, redis_url = tmp_path_factory.mktemp("hardening"), create_database(), free_redis_db()
    app = make_app(tmp, database_url, redis_url)
    migrate(app)
    dispose(app)
    try:
        yield tmp, database_url, redis_url
    finally:
        redis.Redis.from_url(redis_url).flushdb()
        drop_database(database_url)


@pytest.fixture(scope="module")
def app(backing: tuple[Path, str, str]) -> Iterator[Flask]:
    app = make_app(*backing)
    yield app
    dispose(app)


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def app_with(backing: tuple[Path, str, str]) -> Iterator[Any]:
    """An app with other settings (tokens, allowed hosts), disposed after the test."""
    made: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        made.append(make_app(*backing, **overrides))
        return made[-1]

    yield build
    for app in made:
        dispose(app)


def finished_job(app: Flask, output: str | None = None) -> str:
    with app.app_context():
        job = Job(query="cat", request_limit=5, out_dir=output or f"out-{uuid.uuid4().hex[:6]}", source="naver",
                  status="done", options={}, log="", task_ids=[])
        db.session.add(job)
        db.session.commit()
        return job.id


def assert_error(response: Any, status: int, error: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.data
    body = response.get_json()
    assert set(body) == {"error", "detail"} and isinstance(body["detail"], (str, list)) and body["detail"], body
    if isinstance(body["detail"], str):
        assert body["detail"].endswith(".") and " " in body["detail"], body  # a sentence, not a code
    if error:
        assert body["error"] == error, body
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    return dict(body)


# -- 1. no request makes a 500 ----------------------------------------------------------------------


def test_deeply_nested_json_is_a_400_not_a_500(client: FlaskClient) -> None:
    for path in ("/api/jobs", "/api/run"):
        body = assert_error(client.post(path, data="[" * 5000, content_type="application/json"), 400, "bad_request")
        assert "nested" in body["detail"]


@pytest.mark.parametrize("query", ["page=²", "per_page=²", "page=٣", "page=1" + "0" * 4400, "per_page=+5",
                                   "page=%205", "page=1.5", "page="])
def test_query_numbers_must_be_plain_ascii_digits(client: FlaskClient, query: str) -> None:
    body = assert_error(client.get(f"/api/jobs?{query}"), 400, "bad_request")
    assert "whole number" in body["detail"]


@pytest.mark.parametrize("query", ["exp=²&sig=x", "exp=٣٣٣٣٣٣٣٣٣٣&sig=" + "0" * 64, "exp=9999999999&sig=é",
                                   "exp=" + "9" * 4400 + "&sig=x", "exp=9999999999", "sig=" + "0" * 64,
                                   "exp=9999999999&sig=" + "0" * 64])
def test_malformed_signed_links_are_refused_as_invalid_links(app_with: Any, query: str) -> None:
    app = app_with(api_tokens=TOKEN)
    job_id = finished_job(app)
    for path in (f"/api/jobs/{job_id}/archive", f"/api/jobs/{job_id}/images/img_0001.jpg"):
        body = assert_error(app.test_client().get(f"{path}?{query}"), 401, "unauthorized")
        assert "link is invalid or has expired" in body["detail"]


def test_nul_and_control_characters_in_urls_are_refused(client: FlaskClient) -> None:
    for url in ("http://example.com/a\x00.jpg", "http://example.com/a\x1bb.jpg", "http://example.com/\x7f"):
        body = {"query": "cat", "source": "urls", "urls": [url]}
        detail = assert_error(client.post("/api/jobs", json=body), 422, "validation_error")["detail"]
        assert detail[0]["field"].startswith("urls"), detail


def test_a_job_folder_that_left_the_data_folder_is_a_409_without_paths(client: FlaskClient, app: Flask,
                                                                        backing: tuple[Path, str, str]) -> None:
    outside = backing[0] / "elsewhere"
    outside.mkdir()
    (backing[0] / "data").mkdir(exist_ok=True)
    (backing[0] / "data" / "moved").symlink_to(outside)
    job_id = finished_job(app, output="moved")
    for path in ("images", "report", "manifest"):
        response = client.get(f"/api/jobs/{job_id}/{path}")
        assert_error(response, 409, "conflict")
        assert str(backing[0]) not in response.get_data(as_text=True)


def test_an_output_outside_the_data_folder_is_named_without_server_paths(client: FlaskClient,
                                                                         backing: tuple[Path, str, str]) -> None:
    (backing[0] / "data").mkdir(exist_ok=True)
    (backing[0] / "data" / "escape").symlink_to(backing[0])
    response = client.post("/api/jobs", json={"query": "cat", "output": "escape"})
    detail = assert_error(response, 422, "validation_error")["detail"]
    assert detail[0]["field"] == "output" and "escape is not inside the data folder" in detail[0]["message"]
    assert str(backing[0]) not in response.get_data(as_text=True)


# -- 2. the database away and back --------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    try:
        find_bindir()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    with PostgresServer() as server:
        yield server


def test_database_outage_is_a_503_and_the_next_request_after_it_works(own_postgres: PostgresServer,
                                                                       tmp_path: Path) -> None:
    redis_url = free_redis_db()
    app = make_app(tmp_path, own_postgres.url, redis_url)
    try:
        migrate(app)
        client = app.test_client()
        assert client.get("/api/jobs").status_code == 200
        own_postgres.stop()
        for response in (client.get("/api/jobs"), client.post("/api/jobs", json={"query": "cat"}),
                         client.get(f"/api/jobs/{uuid.uuid4()}"), client.post("/api/jobs/clear")):
            body = assert_error(response, 503, "service_unavailable")
            assert "database is unreachable" in body["detail"] and "retry" in body["detail"]
            assert response.headers["Retry-After"].isdigit()
        own_postgres.start()
        assert client.get("/api/jobs").status_code == 200
        assert client.post("/api/jobs", json={"query": "cat"}).status_code == 202
        assert client.get("/api/jobs").get_json()["total"] == 1  # the refused submission left no row
    finally:
        own_postgres.start()
        dispose(app)
        redis.Redis.from_url(redis_url).flushdb()


def test_a_query_bug_is_still_a_plain_500(app_with: Any) -> None:
    from sqlalchemy import text

    app = app_with()

    @app.get("/bad-query")
    def bad_query() -> str:
        db.session.execute(text("SELECT * FROM no_such_table"))
        return "unreachable"

    body = assert_error(app.test_client().get("/bad-query"), 500, "internal_server_error")
    assert "unexpected" in body["detail"]


# -- 3. other web sites ------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port of localhost, or a sibling subdomain
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},  # the browser's word wins
    {"Origin": "https://evil.example"},
    {"Origin": "http://localhost:3000"},
    {"Origin": "null"},
    {"Origin": "http://localhost:abc"},
])
def test_writes_from_other_web_sites_are_refused(client: FlaskClient, app: Flask, headers: dict[str, str]) -> None:
    job_id = finished_job(app)
    for method, path in (("POST", "/api/jobs/clear"), ("DELETE", f"/api/jobs/{job_id}"),
                         ("POST", f"/api/jobs/{job_id}/cancel")):
        body = assert_error(client.open(path, method=method, headers=headers), 403, "forbidden")
        assert "other web sites" in body["detail"]
    response = client.post("/api/jobs", json={"query": "cat"}, headers=headers)
    assert_error(response, 403, "forbidden")
    assert client.get(f"/api/jobs/{job_id}").status_code == 200  # nothing was deleted


@pytest.mark.parametrize("headers", [
    {},  # curl, scripts
    {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},  # the dashboard
    {"Sec-Fetch-Site": "none"},  # typed in by the user
    {"Origin": "http://localhost"},  # an older browser on the dashboard
    {"Origin": "http://localhost:8000", "Host": "localhost:8000"},
    {"Origin": "https://localhost", "Host": "localhost"},  # behind a TLS proxy
])
def test_writes_from_the_dashboard_and_scripts_pass(client: FlaskClient, headers: dict[str, str]) -> None:
    assert client.post("/api/jobs/clear", headers=headers).status_code == 200
    assert client.post("/api/jobs", json={"query": "cat"}, headers=headers).status_code == 202


def test_reads_from_other_sites_are_not_refused(client: FlaskClient) -> None:
    # Reading is the browser's same-origin policy's business; an <img> on another page may load.
    assert client.get("/api/jobs", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example", "10.0.0.1", "a b"])
def test_unknown_host_names_are_refused_naming_the_setting(client: FlaskClient, host: str) -> None:
    for path in ("/api/jobs", "/healthz", "/"):
        body = assert_error(client.get(path, headers={"Host": host}), 400, "bad_request")
        assert "CVDB_ALLOWED_HOSTS" in body["detail"]


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8000", "127.0.0.1:5000", "[::1]", "[::1]:8000"])
def test_local_host_names_pass_whatever_the_port(client: FlaskClient, host: str) -> None:
    assert client.get("/api/jobs", headers={"Host": host}).status_code == 200


def test_allowed_hosts_is_configurable(app_with: Any) -> None:
    named = app_with(allowed_hosts="api.example, [2001:db8::1]").test_client()
    assert named.get("/api/jobs", headers={"Host": "api.example:8443"}).status_code == 200
    assert named.get("/api/jobs", headers={"Host": "[2001:db8::1]:80"}).status_code == 200
    assert_error(named.get("/api/jobs", headers={"Host": "localhost"}), 400)
    anything = app_with(allowed_hosts="*").test_client()
    assert anything.get("/api/jobs", headers={"Host": "whatever.example"}).status_code == 200
    blank = app_with(allowed_hosts=" ").test_client()  # empty means the defaults, not "nothing"
    assert blank.get("/api/jobs", headers={"Host": "127.0.0.1"}).status_code == 200


def test_cvdb_serve_lets_the_api_answer_to_its_bind_address(monkeypatch: pytest.MonkeyPatch,
                                                            app_with: Any) -> None:
    monkeypatch.delenv("CVDB_ALLOWED_HOSTS", raising=False)
    env = serve.plan(1, 1, "192.168.7.5:8000", flower=False, beat=False)[0].env
    assert env["CVDB_ALLOWED_HOSTS"].split(",") == ["localhost", "127.0.0.1", "::1", "192.168.7.5"]
    client = app_with(allowed_hosts=env["CVDB_ALLOWED_HOSTS"]).test_client()
    assert client.get("/api/jobs", headers={"Host": "192.168.7.5:8000"}).status_code == 200
    assert serve.api_environment("[::]:8000")["CVDB_ALLOWED_HOSTS"].endswith(",::")
    monkeypatch.setenv("CVDB_ALLOWED_HOSTS", "api.example")
    assert serve.api_environment("192.168.7.5:8000") == {}  # the operator's list stands


# -- 4. headers and paths ----------------------------------------------------------------------------


def test_every_response_says_nosniff(client: FlaskClient, app: Flask) -> None:
    job_id = finished_job(app)
    for response in (client.get("/api/jobs"), client.get(f"/api/jobs/{job_id}"), client.get("/api/openapi.json"),
                     client.get("/no/such/route"), client.get("/api/jobs?page=0"), client.get("/"),
                     client.post("/api/jobs", data="x", content_type="text/plain"),
                     client.delete(f"/api/jobs/{job_id}"), client.get("/ui/common.js")):
        assert response.headers.get("X-Content-Type-Options") == "nosniff", (response.status_code, response.data[:80])


def test_an_unexpected_error_says_nosniff_too(app_with: Any) -> None:
    app = app_with()

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internals")

    assert_error(app.test_client().get("/boom"), 500, "internal_server_error")


def test_openapi_documents_the_new_refusals(client: FlaskClient) -> None:
    paths = client.get("/api/openapi.json").get_json()["paths"]
    assert {"400", "403", "503"} <= set(paths["/api/jobs/clear"]["post"]["responses"])
    assert {"400", "503"} <= set(paths["/api/jobs"]["get"]["responses"])
    assert "403" not in paths["/api/jobs"]["get"]["responses"]


def test_report_json_holds_no_absolute_server_path(tmp_path: Path) -> None:
    model_dir = tmp_path / "models" / "my-clip"
    model_dir.mkdir(parents=True)
    settings = Settings(data_root=tmp_path / "data", model=str(model_dir), text_model=str(model_dir))
    embedder = SimpleNamespace(describe=lambda: {"model": str(model_dir), "text_model": None, "device": "cpu"})
    empty = SimpleNamespace(outcomes={}, chosen=None, reason="no candidates", clusters=[])
    report = build_report("cat", 5, settings, embedder, empty, empty, [], {})  # type: ignore[arg-type]
    text = json.dumps(report)
    assert str(tmp_path) not in text and '"/' not in text, text
    assert report["model"]["model"] == "my-clip" and report["thresholds"]["model"] == "my-clip"
    assert report["thresholds"]["data_root"] == "data" and report["thresholds"]["eps"] == 0.18
    hub = build_report("cat", 5, Settings(), embedder, empty, empty, [], {})  # type: ignore[arg-type]
    assert hub["thresholds"]["model"] == "openai/clip-vit-base-patch32"  # a hub name stays as it is
    assert "allowed_hosts" not in hub["thresholds"]
