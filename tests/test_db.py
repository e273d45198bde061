"""Models, migrations and the API's health/error handling against a real, throwaway Postgres."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import flask_migrate
import psycopg2
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from sqlalchemy import inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, scoped_session

from api import DEFAULT_DATABASE_URL, MIGRATIONS_DIR, create_app
from common.config import Settings
from common.db import db
from common.models import Candidate, Job

SERVER_URL = make_url(os.environ.get("CVDB_DATABASE_URL", DEFAULT_DATABASE_URL))


def _admin_connection() -> psycopg2.extensions.connection:
    """Autocommit connection to the server's `postgres` database (CREATE DATABASE needs it)."""
    conn = psycopg2.connect(
        host=SERVER_URL.host,
        port=SERVER_URL.port or 5432,
        user=SERVER_URL.username,
        password=SERVER_URL.password,
        dbname="postgres",
        connect_timeout=3,
    )
    conn.autocommit = True
    return conn


def _drop_database(name: str) -> None:
    conn = _admin_connection()
    try:
        with conn.cursor() as cur:
            # A leftover pooled connection would make DROP DATABASE fail.
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        conn.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[URL]:
    try:
        conn = _admin_connection()
    except psycopg2.OperationalError as exc:
        reason = " ".join(str(exc).split())  # psycopg2 messages span several lines
        pytest.skip(f"Postgres unreachable at {SERVER_URL.host}:{SERVER_URL.port}: {reason}")
    name = f"cvdb_test_{uuid.uuid4().hex[:12]}"
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    try:
        yield SERVER_URL.set(database=name)
    finally:
        _drop_database(name)


@pytest.fixture(scope="session")
def app(database_url: URL) -> Iterator[Flask]:
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url.render_as_string(hide_password=False),
                      "TESTING": True})
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(scope="session")
def migrated_app(app: Flask) -> Flask:
    with app.app_context():
        flask_migrate.upgrade()  # a no-op when test_upgrade_creates_tables already ran it
    return app


@pytest.fixture()
def session(migrated_app: Flask) -> Iterator[scoped_session[Session]]:
    """A database session inside an app context; rows written by a test are removed after it."""
    with migrated_app.app_context():
        yield db.session
        db.session.rollback()
        db.session.query(Job).delete()
        db.session.commit()


def _tables() -> set[str]:
    return set(inspect(db.engine).get_table_names())


def _job(**fields: object) -> Job:
    values: dict[str, object] = {
        "query": "golden retriever", "request_limit": 10, "out_dir": "dogs", "source": "naver",
    }
    values.update(fields)
    return Job(**values)


# 1. Upgrade from an empty database.

def test_upgrade_creates_tables(app: Flask) -> None:
    with app.app_context():
        assert not {"jobs", "candidates"} & _tables()
        flask_migrate.upgrade()
        assert {"jobs", "candidates", "alembic_version"} <= _tables()


# 2. One head, and the migration matches the models.

def test_single_head() -> None:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    assert len(script.get_heads()) == 1


def test_migration_matches_models(migrated_app: Flask) -> None:
    with migrated_app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, db.metadata) == []


# 3. Round trip and constraints.

def test_job_with_candidates_round_trips(session: scoped_session[Session]) -> None:
    job = _job(options={"select": "query"}, task_ids=["t1"], stage_counts={"search": {"done": 3}})
    job.candidates = [
        Candidate(url=f"https://img.example/{i}.jpg", rank=i, source="naver") for i in range(3)
    ]
    db.session.add(job)
    db.session.commit()
    job_id = job.id
    db.session.expunge_all()

    loaded = db.session.get(Job, job_id)
    assert loaded is not None
    assert uuid.UUID(loaded.id).version == 4
    assert loaded.status == "queued" and loaded.cancel_requested is False
    assert loaded.created_at.tzinfo is not None
    assert sorted(c.rank for c in loaded.candidates) == [0, 1, 2]
    assert {c.status for c in loaded.candidates} == {"pending"}
    body = loaded.to_dict()
    assert body["id"] == job_id and body["options"] == {"select": "query"}
    assert body["stage_counts"] == {"search": {"done": 3}}


def test_deleting_job_cascades_to_candidates(session: scoped_session[Session]) -> None:
    job = _job()
    job.candidates = [Candidate(url="https://img.example/a.jpg", rank=0, source="naver")]
    db.session.add(job)
    db.session.commit()
    job_id = job.id
    db.session.expunge_all()

    # Delete in SQL, so the database's ON DELETE CASCADE is what removes the candidates.
    db.session.execute(db.delete(Job).where(Job.id == job_id))
    db.session.commit()
    remaining = db.session.scalar(
        db.select(db.func.count()).select_from(Candidate).where(Candidate.job_id == job_id)
    )
    assert remaining == 0


def test_status_check_constraint_rejects_unknown_status(session: scoped_session[Session]) -> None:
    db.session.add(_job(status="exploded"))
    with pytest.raises(IntegrityError, match="ck_jobs_status"):
        db.session.commit()


def test_candidate_url_is_unique_per_job(session: scoped_session[Session]) -> None:
    first, second = _job(), _job(out_dir="cats")  # one unfinished job per folder
    url = "https://img.example/same.jpg"
    first.candidates = [Candidate(url=url, rank=0, source="naver")]
    second.candidates = [Candidate(url=url, rank=0, source="naver")]  # another job: allowed
    db.session.add_all([first, second])
    db.session.commit()

    db.session.add(Candidate(job_id=first.id, url=url, rank=1, source="naver"))
    with pytest.raises(IntegrityError, match="uq_candidates_job_id_url"):
        db.session.commit()


# 4. Health check and JSON errors.

def test_healthz_ok(migrated_app: Flask) -> None:
    response = migrated_app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "postgres": "ok", "redis": "ok"}


def test_healthz_503_when_redis_missing(database_url: URL) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url.render_as_string(hide_password=False),
                      "CVDB_SETTINGS": Settings(redis_url="redis://127.0.0.1:1/0")})
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["redis"] == "error" and body["postgres"] == "ok" and "redis" in body["detail"]
    with app.app_context():
        db.engine.dispose()


def test_healthz_503_when_database_missing(database_url: URL) -> None:
    missing = database_url.set(database=f"cvdb_missing_{uuid.uuid4().hex[:8]}")
    app = create_app({"SQLALCHEMY_DATABASE_URI": missing.render_as_string(hide_password=False)})
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["postgres"] == "error" and "postgres" in body["detail"]
    with app.app_context():
        db.engine.dispose()


def test_unknown_route_is_json_404(migrated_app: Flask) -> None:
    response = migrated_app.test_client().get("/no/such/route")
    assert response.status_code == 404
    body = response.get_json()
    assert body["error"] == "not_found" and body["detail"]
    assert set(body) == {"error", "detail"}


def test_oversized_body_is_json_413(migrated_app: Flask) -> None:
    response = migrated_app.test_client().post("/healthz", data=b"x" * (17 * 1024))
    assert response.status_code == 413
    body = response.get_json()
    assert body["error"] == "request_entity_too_large" and body["detail"]


def test_unexpected_error_is_json_500_without_trace(database_url: URL) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url.render_as_string(hide_password=False)})

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.get_json() == {
        "error": "internal_server_error", "detail": "An unexpected error occurred.",
    }
    assert b"secret internals" not in response.data and b"Traceback" not in response.data
