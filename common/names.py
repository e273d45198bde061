"""The names the tool gives and accepts: dataset folders, image files. Imports nothing of the project,
so the CLI, the API, the models and the writer agree without importing each other."""

from __future__ import annotations

import hashlib
import re

MAX_OUTPUT = 64  # characters in an output folder name the API accepts
OUTPUT_NAME = rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_OUTPUT - 1}}}$"
# A file the tool writes inside a dataset folder, relative to it: up to three folder levels
# (split, class, a format's own), each name starting with a letter or digit, so never "..".
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
DATASET_FILE = re.compile(rf"^(?:{_PART}/){{0,3}}{_PART}$")
# One of those that is an image: img_0001.jpg, or one in a class (and split) folder.
IMAGE_PATH = rf"(?:{_PART}/){{0,3}}img_\d{{4,6}}\.jpg"
IMAGE_FILE = re.compile(rf"^{IMAGE_PATH}$")
SPLITS = ("train", "val", "test")


def slug(query: str, fallback: str = "dataset") -> str:
    """An ASCII folder name for a query; Korean and other scripts get a stable hash."""
    text = re.sub(r"[^A-Za-z0-9]+", "-", query).strip("-").lower()[:48]
    return text or f"{fallback}-" + hashlib.sha1(query.encode()).hexdigest()[:8]


def class_folders(labels: list[str]) -> list[str]:
    """One distinct folder name per class label ("red panda" -> red-panda, "고양이" -> class-1a2b3c4d)."""
    folders: list[str] = []
    for label in labels:
        base = slug(label, "class")
        folder, n = base, 2
        while folder in folders or folder in SPLITS:
            folder, n = f"{base}-{n}", n + 1
        folders.append(folder)
    return folders


def image_name(index: int) -> str:
    """img_0001.jpg for the first kept picture."""
    return f"img_{index:04d}.jpg"
