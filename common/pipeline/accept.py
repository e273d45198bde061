"""One downloaded file -> a staged, upright, re-encoded JPEG with its scores, or a drop reason."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from common.config import Settings
from common.pipeline.decode import DecodeError, as_array, encode_jpeg, open_header, to_upright_rgb
from common.pipeline.dedup import Fingerprint, fingerprint
from common.pipeline.export import atomic_write
from common.pipeline.quality import assess_pixels, assess_size, downscale_long_side

DECODE_REASONS = {
    "decode_error": "not a readable image",
    "truncated": "image data truncated or corrupt",
    "decompression_bomb": "declares more pixels than the decode limit",
}


@dataclass
class StagedImage:
    """An image that passed every per-image check, written to the staging folder."""

    url: str
    source_sha256: str
    path: Path
    width: int
    height: int
    image_format: str
    scores: dict[str, float]
    fingerprint: Fingerprint
    pixel_values: np.ndarray | None = field(default=None, repr=False)  # CLIP input, freed once embedded

    @property
    def quality_rank(self) -> tuple[float, float]:
        """Which copy of a duplicate group to keep: the largest, then the sharpest."""
        return (float(self.width * self.height), self.scores.get("sharpness", 0.0))


@dataclass(frozen=True)
class Rejected:
    url: str
    reason: str
    detail: str
    scores: dict[str, float] = field(default_factory=dict)
    sha256: str | None = None  # the downloaded bytes' digest, when there were bytes


def stage_download(
    url: str,
    data: bytes,
    image_format: str,
    source_sha256: str,
    settings: Settings,
    staging_dir: Path,
    prepare: Callable[[Image.Image], np.ndarray] | None = None,
) -> StagedImage | Rejected:
    """Header limits and size checks before any pixel is decoded, then pixel checks, then staging."""
    try:
        header = open_header(data, settings.max_pixels, settings.max_side)
        size = assess_size(*header.size, settings)
        if size.reason:
            return Rejected(url, size.reason, size.detail or "", size.scores)
        image = to_upright_rgb(header)
    except DecodeError as exc:
        return Rejected(url, exc.reason, exc.detail)
    # One downscaled working copy feeds every check, hash and CLIP: full-size pixel work
    # was most of the per-image cost. Only the exact-pixel hash and the export need full size.
    work = downscale_long_side(as_array(image), settings.sharpness_side)
    pixels = assess_pixels(work, settings)
    scores = {**size.scores, **pixels.scores}
    if pixels.reason:
        return Rejected(url, pixels.reason, pixels.detail or "", scores)
    path = staging_dir / f"{source_sha256[:16]}.jpg"
    # Staging is scratch: export fsyncs the files it keeps, so no fsync for every candidate here.
    atomic_write(path, encode_jpeg(image, settings.jpeg_quality), durable=False)
    work_image = Image.fromarray(work)
    return StagedImage(
        url=url,
        source_sha256=source_sha256,
        path=path,
        width=image.width,
        height=image.height,
        image_format=image_format,
        scores=scores,
        fingerprint=fingerprint(image, work_image),
        pixel_values=prepare(work_image) if prepare else None,
    )
