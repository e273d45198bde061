"""Flask app factory for the REST API: config, database, migrations, JSON errors, health check."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from werkzeug.exceptions import HTTPException

from common.config import Settings
from common.db import db, migrate

DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/cvdb"
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
# Job requests are a query and a few options; anything larger is a mistake or an attack.
MAX_CONTENT_LENGTH = 16 * 1024

log = logging.getLogger(__name__)


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the API app; `overrides` replaces config keys (tests point it at their database)."""
    app = Flask(__name__)
    app.config.update(_base_config())
    if overrides:
        app.config.update(overrides)
    # Models must be imported before migrate/autogenerate look at db.metadata.
    import common.models  # noqa: F401

    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR))
    _register_error_handlers(app)
    app.before_request(_reject_oversized_body)
    _register_health(app)
    return app


def _base_config() -> dict[str, Any]:
    return {
        "CVDB_SETTINGS": Settings(),
        "SQLALCHEMY_DATABASE_URI": os.environ.get("CVDB_DATABASE_URL", DEFAULT_DATABASE_URL),
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
        checks = {"postgres": _check_postgres()}
        # Redis joins these checks when the Celery broker is wired in.
        failing = [name for name, state in checks.items() if state != "ok"]
        if failing:
            body = {"status": "unavailable", **checks, "error": "service_unavailable",
                    "detail": f"Unreachable: {', '.join(failing)}."}
            return jsonify(body), 503
        return jsonify({"status": "ok", **checks}), 200


def _check_postgres() -> str:
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver or pool error means "not healthy"
        log.warning("postgres health check failed: %s", type(exc).__name__)
        return "error"
    return "ok"
