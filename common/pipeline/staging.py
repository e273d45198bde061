"""Staged images kept on disk between the service's tasks: fetch writes, embed and select read.

Beside each staged download `<key>.download` (its bytes as they came) lie `<key>.json` (size, format, scores, hashes), `<key>.npz`
(the fingerprint arrays and CLIP's input crop, uint8) and, once embedded, `<key>.clip.npy`.
Every file is written atomically, so a task that dies mid-way leaves whole files or none.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from common.pipeline.accept import DOWNLOAD_SUFFIX, StagedImage
from common.pipeline.dedup import Fingerprint
from common.pipeline.export import atomic_write, refuse_link


def key(source_sha256: str) -> str:
    """Staged files are named by content, so a chunk done twice writes the same files again."""
    return source_sha256[:16]


def save(staged: StagedImage) -> None:
    folder, name = staged.path.parent, key(staged.source_sha256)
    refuse_link(folder)  # a .staging swapped for a symlink would put files outside the data folder
    arrays = {"thumb": staged.fingerprint.thumb, "layout": staged.fingerprint.layout}
    if staged.clip_crop is not None:
        arrays["crop"] = staged.clip_crop
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(folder / f"{name}.npz", buffer.getvalue(), durable=False)
    meta = {"url": staged.url, "source_sha256": staged.source_sha256, "width": staged.width,
            "height": staged.height, "image_format": staged.image_format, "scores": staged.scores,
            "pixel_hash": staged.fingerprint.pixel_hash, "phash": staged.fingerprint.phash}
    # The metadata goes last: its presence means the image and arrays are complete.
    atomic_write(folder / f"{name}.json", json.dumps(meta).encode(), durable=False)


def exists(folder: Path, source_sha256: str) -> bool:
    return (folder / f"{key(source_sha256)}.json").is_file()


def load(folder: Path, source_sha256: str, url: str, with_crop: bool = False) -> StagedImage:
    """The staged image as the fetch task left it, credited to `url` (copies share one file)."""
    name = key(source_sha256)
    refuse_link(folder)  # select moves staged files into the dataset: never from outside the folder
    meta = json.loads((folder / f"{name}.json").read_text())
    with np.load(folder / f"{name}.npz") as arrays:
        fingerprint = Fingerprint(meta["pixel_hash"], int(meta["phash"]), arrays["thumb"], arrays["layout"])
        # An older version staged normalised floats ("pixels") instead: those have no crop.
        crop = arrays["crop"] if with_crop and "crop" in arrays else None
    return StagedImage(url=url, source_sha256=source_sha256, path=folder / f"{name}{DOWNLOAD_SUFFIX}", width=meta["width"],
                       height=meta["height"], image_format=meta["image_format"], scores=meta["scores"],
                       fingerprint=fingerprint, clip_crop=crop)


def save_vector(folder: Path, source_sha256: str, vector: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, vector.astype(np.float32))
    atomic_write(folder / f"{key(source_sha256)}.clip.npy", buffer.getvalue(), durable=False)


def has_vector(folder: Path, source_sha256: str) -> bool:
    return (folder / f"{key(source_sha256)}.clip.npy").is_file()


def load_vector(folder: Path, source_sha256: str) -> np.ndarray:
    return np.load(folder / f"{key(source_sha256)}.clip.npy")
