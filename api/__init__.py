"""Flask app factory for the REST API: config, database, queue, auth, JSON errors, health, OpenAPI."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from flask import Flask, Response, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from api import openapi, signing
from common.config import Settings
from common.db import db, migrate
from common.pipeline.export import OutputError
from workers.celery_app import make_celery

DEFAULT_DATABASE_URL: str = Settings.model_fields["database_url"].default
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
# Job requests are a query and a few options; anything larger is a mistake or an attack.
MAX_CONTENT_LENGTH = 16 * 1024
# Methods that change something; a web page on another site must not be able to send them.
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values a browser sends for the API's own dashboard or a typed-in URL. `same-site`
# is refused too: it covers every other port of localhost and sibling subdomains.
OWN_SITE = frozenset({"same-origin", "none"})
DEFAULT_PORTS = {"http": 80, "https": 443}
DATABASE_RETRY_S = 5

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
    app.before_request(_check_host)
    app.before_request(_refuse_cross_site_writes)
    app.before_request(_reject_oversized_body)
    app.before_request(_require_token)
    app.after_request(_security_headers)
    _register_health(app)
    from api.dashboard import bp as dashboard_bp
    from api.jobs import bp as jobs_bp
    from api.original import bp as original_bp
    from api.search import bp as search_bp

    app.register_blueprint(jobs_bp)
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(original_bp)
    app.register_blueprint(search_bp)

    @app.get("/api/openapi.json")
    def openapi_document() -> ResponseReturnValue:
        return jsonify(openapi.document(secured=bool(signing.configured_tokens())))

    return app


def _refuse(status: int, error: str, detail: str) -> None:
    response = jsonify(error_body(error, detail))
    response.status_code = status
    abort(response)


def _allowed_hosts() -> set[str]:
    settings: Settings = current_app.config["CVDB_SETTINGS"]
    names = settings.allowed_hosts.split(",")
    if not any(n.strip() for n in names):
        names = Settings.model_fields["allowed_hosts"].default.split(",")
    return {n.strip().lower().strip("[]") for n in names if n.strip()}


def _check_host() -> None:
    """Answer only to the host names in `allowed_hosts`, whatever the port: a page whose own host
    name was made to resolve to this server (DNS rebinding) still sends its own name."""
    allowed = _allowed_hosts()
    if "*" in allowed:
        return
    hostname = urlsplit(f"//{request.host}").hostname or ""  # werkzeug leaves a malformed Host empty
    if hostname not in allowed:
        named = f"the host name {hostname[:100]!r}" if hostname else "a missing or malformed Host header"
        _refuse(400, "bad_request", f"This server does not answer to {named}; "
                "add the name to CVDB_ALLOWED_HOSTS (comma separated) if it should.")


def _same_origin(origin: str) -> bool:
    """True when the Origin header names this very server: the Host header's name and port
    (a default port counts as none: behind a TLS proxy the Host has no scheme to go by)."""
    try:
        given, own = urlsplit(origin), urlsplit(f"//{request.host}")
        if given.scheme not in DEFAULT_PORTS or not given.hostname:
            return False  # "null" (a sandboxed or privacy-sensitive context) included
        given_port = None if given.port == DEFAULT_PORTS[given.scheme] else given.port
        own_port = None if own.port in DEFAULT_PORTS.values() else own.port
        return (given.hostname, given_port) == (own.hostname, own_port)
    except ValueError:  # a malformed port
        return False


def _refuse_cross_site_writes() -> None:
    """A page on another site may not change anything here (a cross-site form POST to
    /api/jobs/clear would otherwise wipe the history): browsers say where a request comes from
    in Sec-Fetch-Site, older ones in Origin. curl and scripts send neither and pass."""
    if request.method not in STATE_CHANGING:
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        cross = site.strip().lower() not in OWN_SITE
    else:
        origin = request.headers.get("Origin")
        cross = origin is not None and not _same_origin(origin)
    if cross:
        _refuse(403, "forbidden", "Requests from other web sites may not change anything here; use the "
                "dashboard this server serves, or call the API from a script.")


def _security_headers(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


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
        detail = "Send a valid token: Authorization: Bearer <token>."
        if signing.carries_signature(request.args):
            detail = ("This link is invalid or has expired; ask the API for a fresh one, "
                      "or send a valid token: Authorization: Bearer <token>.")
        response = jsonify(error_body("unauthorized", detail))
        response.status_code = 401
        response.headers["WWW-Authenticate"] = "Bearer"
        abort(response)


def _base_config() -> dict[str, Any]:
    settings = Settings()
    return {
        "CVDB_SETTINGS": settings,
        "SQLALCHEMY_DATABASE_URI": settings.database_url,
        # A dropped connection (Postgres restart) is noticed before a request uses it.
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}},
        "MAX_CONTENT_LENGTH": MAX_CONTENT_LENGTH,
    }


def _reject_oversized_body() -> None:
    """Answer 413 from Content-Length alone, before routing or any view reads the body.

    Flask only enforces MAX_CONTENT_LENGTH when a view reads the body; checking the header
    here makes the limit hold for every route (bodies without a length are still capped on read).
    """
    if request.endpoint == "search.search_by_picture":  # a picture, not a JSON request
        from api.search import UPLOAD_BYTES

        request.max_content_length = UPLOAD_BYTES
    limit = request.max_content_length  # the app's MAX_CONTENT_LENGTH, or the route's own
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

    @app.errorhandler(DBAPIError)
    def database_error(exc: DBAPIError) -> ResponseReturnValue:
        if not isinstance(exc, OperationalError) and not exc.connection_invalidated:
            return unexpected_error(exc)  # a bug in a query, not an outage
        return _database_unreachable(exc)

    @app.errorhandler(OutputError)
    def output_error(exc: OutputError) -> ResponseReturnValue:
        # A job's folder that no longer resolves inside the data folder: a link was put there.
        log.warning("job folder refused: %s", exc)
        return jsonify(error_body("conflict", "The job's output folder no longer lies inside the data folder "
                                  "(a link points elsewhere); the server's operator has to move or remove it.")), 409


def _database_unreachable(exc: DBAPIError) -> ResponseReturnValue:
    """Postgres down or restarting: 503 with a sentence; the session is discarded, so the first
    request after it is back gets a fresh connection (pool_pre_ping drops the dead ones)."""
    log.warning("database unreachable: %s", " ".join(str(exc.orig).split())[:300])
    try:
        db.session.rollback()
    except Exception:  # the connection is gone; nothing to roll back
        pass
    db.session.remove()
    response = jsonify(error_body("service_unavailable", "The database is unreachable right now; "
                                  "retry in a few seconds."))
    response.status_code = 503
    response.headers["Retry-After"] = str(DATABASE_RETRY_S)
    return response


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
