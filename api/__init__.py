"""Flask app factory for the REST API: config, database, queue, auth, JSON errors, health, OpenAPI."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any

import redis
from flask import Flask, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from werkzeug.exceptions import HTTPException

from api import openapi, signing
from common.config import Settings
from common.db import db, migrate
from workers.celery_app import make_celery

DEFAULT_DATABASE_URL: str = Settings.model_fields["database_url"].default
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
# Job requests are a query and a few options; anything larger is a mistake or an attack.
MAX_CONTENT_LENGTH = 16 * 1024

log = logging.getLogger(__name__)


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the API app; `overrides` replaces config keys (tests point it at their database)."""
    app = Flask(__name__, static_folder=None)  # the dashboard blueprint serves api/static under /ui
    app.config.update(_base_config())
    if overrides:
        app.config.update(overrides)
    # Models must be imported before migrate/autogenerate look at db.metadata.
    import common.models  # noqa: F401

    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR))
    make_celery(app)
    _register_error_handlers(app)
    app.before_request(_reject_oversized_body)
    app.before_request(_require_token)
    _register_health(app)
    from api.dashboard import bp as dashboard_bp
    from api.jobs import bp as jobs_bp

    app.register_blueprint(jobs_bp)
    app.register_blueprint(dashboard_bp)

    @app.get("/api/openapi.json")
    def openapi_document() -> ResponseReturnValue:
        return jsonify(openapi.document(secured=bool(signing.configured_tokens())))

    return app


def _require_token() -> None:
    """With tokens configured, every /api/ route needs `Authorization: Bearer <token>`,
    or, for a job's result files, a signed link handed out by the API."""
    tokens = signing.configured_tokens()
    if not tokens or not request.path.startswith("/api/") or request.path == "/api/openapi.json":
        return
    if request.method in ("GET", "HEAD") and signing.valid(request.path, request.args, tokens):
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Compare against every token in constant time: no early exit that leaks which one matched.
    matches = [hmac.compare_digest(given.strip().encode(), t.encode()) for t in tokens]
    if scheme.lower() != "bearer" or not any(matches):
        response = jsonify(error_body("unauthorized", "Send a valid token: Authorization: Bearer <token>."))
        response.status_code = 401
        response.headers["WWW-Authenticate"] = "Bearer"
        abort(response)


def _base_config() -> dict[str, Any]:
    settings = Settings()
    return {
        "CVDB_SETTINGS": settings,
        "SQLALCHEMY_DATABASE_URI": settings.database_url,
        # A dropped connection (Postgres restart) is noticed before a request uses it.
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "MAX_CONTENT_LENGTH": MAX_CONTENT_LENGTH,
    }


def _reject_oversized_body() -> None:
    """Answer 413 from Content-Length alone, before routing or any view reads the body.

    Flask only enforces MAX_CONTENT_LENGTH when a view reads the body; checking the header
    here makes the limit hold for every route (bodies without a length are still capped on read).
    """
    limit = request.max_content_length  # the app's MAX_CONTENT_LENGTH
    if limit is not None and request.content_length is not None and request.content_length > limit:
        abort(413)


def error_body(error: str, detail: str) -> dict[str, str]:
    return {"error": error, "detail": detail}


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> ResponseReturnValue:
        name = (exc.name or "error").lower().replace(" ", "_")
        detail = exc.description or exc.name or "Request failed."
        return jsonify(error_body(name, detail)), exc.code or 500

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> ResponseReturnValue:
        # Log the trace for operators; the client only learns that it was our fault.
        log.exception("unhandled error")
        return jsonify(error_body("internal_server_error", "An unexpected error occurred.")), 500


def _register_health(app: Flask) -> None:
    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        checks = {"postgres": _check_postgres(), "redis": _check_redis()}
        failing = [name for name, state in checks.items() if state != "ok"]
        if failing:
            body = {"status": "unavailable", **checks, "error": "service_unavailable",
                    "detail": f"Unreachable: {', '.join(failing)}."}
            return jsonify(body), 503
        return jsonify({"status": "ok", **checks}), 200


def _check_redis() -> str:
    settings: Settings = current_app.config["CVDB_SETTINGS"]
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        log.warning("redis health check failed: %s", type(exc).__name__)
        return "error"
    return "ok"


def _check_postgres() -> str:
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver or pool error means "not healthy"
        log.warning("postgres health check failed: %s", type(exc).__name__)
        return "error"
    return "ok"
