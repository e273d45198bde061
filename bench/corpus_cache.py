"""The benchmark corpus: synthetic photos of 640-1024 px, rendered once into a cache folder."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from common.devkit import corpus

CLASS_NAMES: tuple[str, ...] = tuple(corpus.CLASSES)
MIN_SIDE, MAX_SIDE = 640, 1024
JPEG_QUALITY = 90


def render_photo(index: int, seed: int) -> bytes:
    """One corpus picture (classes in turn) scaled to a random long side in 640..1024, as JPEG."""
    class_name = CLASS_NAMES[index % len(CLASS_NAMES)]
    rng = corpus.image_rng(seed, class_name, index)
    image = corpus.render(class_name, rng)
    scale = int(rng.integers(MIN_SIDE, MAX_SIDE + 1)) / max(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def ensure_corpus(cache_dir: Path, count: int, seed: int = 0) -> tuple[list[Path], int]:
    """The first `count` pictures as files, rendering only the missing ones; also how many were rendered."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = [cache_dir / f"{index:05d}.jpg" for index in range(count)]
    rendered = 0
    for index, path in enumerate(paths):
        if path.exists():
            continue
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(render_photo(index, seed))
        os.replace(tmp, path)  # an interrupted run never leaves half a picture behind
        rendered += 1
    return paths, rendered
