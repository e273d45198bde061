"""WSGI entry point: `gunicorn api.wsgi:app` or `flask --app api.wsgi db upgrade`."""

from __future__ import annotations

from api import create_app

app = create_app()
