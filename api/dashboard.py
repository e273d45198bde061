"""The web dashboard: static pages that use only the REST API (no server-side rendering)."""

from __future__ import annotations

from flask import Blueprint, Response
from flask.typing import ResponseReturnValue

# Files live in api/static/ and are served under /ui/; no CDN, no build step.
bp = Blueprint("dashboard", __name__, static_folder="static", static_url_path="/ui")

# Scripts and styles come only from this server; data from the API never becomes markup.
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _page(name: str) -> ResponseReturnValue:
    return bp.send_static_file(name)


@bp.get("/")
def index() -> ResponseReturnValue:
    return _page("index.html")


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> ResponseReturnValue:
    """One job's page; the script reads the id from the address and asks the API."""
    return _page("job.html")


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response
