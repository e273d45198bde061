"""One downloaded file -> its checks, scores and fingerprint, staged as it was downloaded, or a drop reason.

Only the kept pictures are decoded in full again and re-encoded, at export (`encode_kept`): most
candidates are dropped, and re-encoding each one was a large share of the per-image work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from common.config import Settings
from common.pipeline.clip_input import ClipInput
from common.pipeline.decode import (DecodeError, as_array, decode_image, draft_scale, encode_jpeg, open_header,
                                    to_upright_rgb)
from common.pipeline.dedup import Fingerprint, fingerprint
from common.pipeline.export import atomic_write
from common.pipeline.quality import assess_pixels, assess_size, downscale_long_side

if TYPE_CHECKING:
    from common.pipeline.decode_pool import DecodePool


DOWNLOAD_SUFFIX = ".download"  # a staged file as downloaded; its re-encoded JPEG takes ".jpg"


@dataclass
class StagedImage:
    """An image that passed every per-image check; its downloaded bytes are in the staging folder."""

    url: str
    source_sha256: str
    path: Path  # the downloaded bytes, as they came (untrusted until re-encoded at export)
    width: int
    height: int
    image_format: str
    scores: dict[str, float]
    fingerprint: Fingerprint
    clip_crop: np.ndarray | None = field(default=None, repr=False)  # CLIP input (uint8), freed once embedded

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


@dataclass(frozen=True)
class Exported:
    """A kept picture's re-encoded JPEG in staging, and the sha256 of its bytes (the manifest's)."""

    path: Path
    sha256: str


@dataclass(frozen=True)
class Checked:
    """What the pure per-image work hands back (picklable: it crosses the decode pool's pipes,
    so it holds only what staging needs; no pixels but CLIP's input crop)."""

    url: str
    width: int
    height: int
    scores: dict[str, float]
    fingerprint: Fingerprint = field(repr=False)
    clip_crop: np.ndarray | None = field(default=None, repr=False)  # CLIP's input (uint8), made from the working copy


def decode_for_checks(header: Image.Image, data: bytes, side: int) -> tuple[Image.Image, np.ndarray, tuple[int, int]]:
    """The upright picture as decoded for the checks, its working copy at most `side` a side, and
    the full upright size. One working copy feeds every check, hash and CLIP: full-size pixel work
    was most of the per-image cost. A large JPEG is decoded that small to begin with (and in full
    again only if it is kept, at export)."""
    full = header.size
    image = to_upright_rgb(header, data, draft_scale(header, side))
    upright = full if image.size == header.size else full[::-1]  # EXIF turned it a quarter: swap
    return image, downscale_long_side(as_array(image), side), upright


def check_download(url: str, data: bytes, settings: Settings, clip: ClipInput | None = None) -> Checked | Rejected:
    """Header limits and size checks before any pixel is decoded, then pixel checks and fingerprints,
    and with `clip`, CLIP's input (made here, so a decode worker process does that work too).

    Pure (bytes in, values out, no files): the decode pool runs exactly this in its workers.
    """
    try:
        header = open_header(data, settings.max_pixels, settings.max_side, settings.max_jpeg_scans)
        size = assess_size(*header.size, settings)
        if size.reason:
            return Rejected(url, size.reason, size.detail or "", size.scores)
        image, work, (width, height) = decode_for_checks(header, data, settings.sharpness_side)
    except DecodeError as exc:
        return Rejected(url, exc.reason, exc.detail)
    pixels = assess_pixels(work, settings)
    scores = {**size.scores, **pixels.scores}
    if pixels.reason:
        return Rejected(url, pixels.reason, pixels.detail or "", scores)
    work_image = Image.fromarray(work)
    return Checked(url, width, height, scores, fingerprint(image, work_image),
                   clip.crop(work_image) if clip else None)


def stage_download(
    url: str,
    data: bytes,
    image_format: str,
    source_sha256: str,
    settings: Settings,
    staging_dir: Path,
    clip: ClipInput | None = None,
    pool: DecodePool | None = None,
) -> StagedImage | Rejected:
    """Check one download (in a `pool` worker process when given, else here), then stage its bytes."""
    checked = pool.check(url, data, settings, clip) if pool else check_download(url, data, settings, clip)
    if isinstance(checked, Rejected):
        return checked
    path = staging_dir / f"{source_sha256[:16]}{DOWNLOAD_SUFFIX}"
    # Staging is scratch: export writes and fsyncs the files it keeps, so no fsync here.
    atomic_write(path, data, durable=False)
    return StagedImage(
        url=url,
        source_sha256=source_sha256,
        path=path,
        width=checked.width,
        height=checked.height,
        image_format=image_format,
        scores=checked.scores,
        fingerprint=checked.fingerprint,
        clip_crop=checked.clip_crop,
    )


def export_jpeg(url: str, data: bytes, settings: Settings) -> bytes | Rejected:
    """A kept download decoded in full, upright, and re-encoded as JPEG: no metadata or trailing
    payload of the original survives. Pure: the decode pool runs it too, under its time budget."""
    try:
        pixels = decode_image(data, settings.max_pixels, settings.max_side, settings.max_jpeg_scans)
    except DecodeError as exc:
        return Rejected(url, exc.reason, f"at export: {exc.detail}")
    return encode_jpeg(pixels, settings.jpeg_quality)


def encode_kept(kept: Sequence[StagedImage], settings: Settings, pool: DecodePool | None = None,
                done: Callable[[], None] = lambda: None) -> list[Exported | Rejected]:
    """Each kept download exported (`export_jpeg`, in a `pool` worker when given) and written beside
    it in staging as `<key>.jpg`; a picture that fails now (its full decode is slower than the one
    the checks ran) comes back Rejected. Threads: each waits on a worker, or on Pillow without the
    GIL. `done` is called once per picture."""
    def encode(image: StagedImage) -> Exported | Rejected:
        data = image.path.read_bytes()
        jpeg = pool.export(image.url, data, settings) if pool else export_jpeg(image.url, data, settings)
        if isinstance(jpeg, Rejected):
            return jpeg
        path = image.path.with_suffix(".jpg")
        atomic_write(path, jpeg, durable=False)
        return Exported(path, hashlib.sha256(jpeg).hexdigest())  # hashed here, not read back for the manifest

    results: list[Exported | Rejected] = []
    with ThreadPoolExecutor(max(1, settings.decode_workers)) as threads:
        for result in threads.map(encode, kept):
            results.append(result)
            done()
    return results
