"""The names the tool gives and accepts: dataset folders, image files. Imports nothing of the project,
so the CLI, the API, the models and the writer agree without importing each other."""

from __future__ import annotations

import hashlib
import re

MAX_OUTPUT = 64  # characters in an output folder name the API accepts
OUTPUT_NAME = rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_OUTPUT - 1}}}$"
IMAGE_NAME = re.compile(r"^img_\d{4,6}\.jpg$")


def slug(query: str) -> str:
    """An ASCII folder name for a query; Korean and other scripts get a stable hash."""
    text = re.sub(r"[^A-Za-z0-9]+", "-", query).strip("-").lower()[:48]
    return text or "dataset-" + hashlib.sha1(query.encode()).hexdigest()[:8]


def image_name(index: int) -> str:
    """img_0001.jpg for the first kept picture."""
    return f"img_{index:04d}.jpg"
