"""Decode untrusted image bytes safely: header limits first, then pixels, upright RGB out."""

from __future__ import annotations

import io
import os
import re
import warnings

# OpenCV reads its decode limits once, at import; set them before anyone imports cv2.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "40000000")
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_WIDTH", "12000")
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_HEIGHT", "12000")

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

# A marker is an 0xFF followed by anything but a stuffed 0x00 or another 0xFF (fill bytes);
# after a scan's entropy-coded data, restart markers (RST0-7) are still part of the data.
# One byte of look-ahead keeps both searches linear, however many 0xFF bytes a file holds.
_MARKER = re.compile(rb"\xff[^\x00\xff]")
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE_MARKERS = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RSTn: no length field
_SOS, _EOI = 0xDA, 0xD9
# Zero bytes slipped in before the EOI to tell a complete last scan from a cut-short one. libjpeg
# itself finishes a cut-short MCU with zero bits, so they must outlast the largest MCU (10 blocks
# of 64 symbols of at most 26 bits: ~2 KB) to decode a block that libjpeg would have left grey.
_PROBE_PADDING = bytes(4096)


class DecodeError(Exception):
    """An image that cannot be used at all; `reason` is the report's drop code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def jpeg_end(data: bytes, max_scans: int) -> int:
    """Walk a JPEG's marker segments without decoding: the offset of its EOI marker.

    Each scan (SOS) is one more pass of the decoder over every block, so thousands of tiny
    repeated scans hold a core for minutes: refused beyond `max_scans`. Data that ends before
    the EOI is refused as truncated, whatever Pillow's LOAD_TRUNCATED_IMAGES says.
    """
    pos, scans = 2, 0  # after SOI
    while True:
        found = _MARKER.search(data, pos)  # libjpeg skips stray bytes between segments too
        if found is None:
            raise DecodeError("truncated", f"JPEG data ends after {scans} scans without an end marker")
        pos, marker = found.start(), data[found.start() + 1]
        if marker == _EOI:
            return pos
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        pos = _segment_end(data, pos)
        if marker == _SOS:
            scans += 1
            if scans > max_scans:
                raise DecodeError("too_many_scans", f"JPEG has more than {max_scans} scans")
            found = _MARKER_AFTER_SCAN.search(data, pos)  # skip the entropy-coded data
            pos = found.start() if found else len(data)


def _segment_end(data: bytes, pos: int) -> int:
    """Where the marker segment at `pos` ends, by its length field."""
    if pos + 4 > len(data):
        raise DecodeError("truncated", "JPEG data ends inside a marker segment")
    length = int.from_bytes(data[pos + 2 : pos + 4], "big")
    if length < 2:
        raise DecodeError("decode_error", f"JPEG marker segment with an impossible length {length}")
    if pos + 2 + length > len(data):
        raise DecodeError("truncated", "JPEG data ends inside a marker segment")
    return pos + 2 + length


def open_header(data: bytes, max_pixels: int, max_side: int, max_scans: int = 100) -> Image.Image:
    """Parse only the header and refuse oversized images before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError("decompression_bomb", f"image declares too many pixels ({exc})") from exc
    except Image.UnidentifiedImageError as exc:  # its message names a Python object, not the file
        raise DecodeError("decode_error", "not a readable JPEG/PNG/WebP/GIF/BMP image (no known image header)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DecodeError("decode_error", f"not a readable JPEG/PNG/WebP/GIF/BMP image ({exc})") from exc
    width, height = image.size
    if width * height > max_pixels or max(width, height) > max_side:
        raise DecodeError(
            "decompression_bomb",
            f"{width}x{height} exceeds the decode limit ({max_pixels} pixels, {max_side} px a side)",
        )
    if width < 1 or height < 1:
        raise DecodeError("decode_error", f"image has an empty size {width}x{height}")
    if is_jpeg(data):
        jpeg_end(data, max_scans)  # scans counted and the end found before any pixel is decoded
    return image


def draft_scale(image: Image.Image, side: int) -> int:
    """How much smaller a JPEG can be decoded (1, 2, 4 or 8, by DCT scaling) on its way to a copy
    at most `side` a side: the largest of those dividing the whole factor by which
    quality.downscale_long_side shrinks it, so the rest is still a whole factor and the copy has
    the same size as from a full decode. Decoding at 1/2 takes about half the time."""
    if image.format != "JPEG":
        return 1
    factor = -(-max(image.size) // side)
    return next(scale for scale in (8, 4, 2, 1) if factor % scale == 0)


def to_upright_rgb(image: Image.Image, data: bytes | None = None, scale: int = 1) -> Image.Image:
    """Decode the first frame fully (a JPEG at 1/`scale` of its size), apply EXIF orientation,
    flatten alpha onto white.

    Given the file's bytes, a JPEG whose data stops early but still ends with an EOI marker
    (libjpeg fills the rest with grey and only warns) is refused as truncated.
    """
    try:
        image.seek(0)
        if scale > 1:
            image.draft(image.mode, (image.width // scale, image.height // scale))
        image.load()
        if data is not None and is_jpeg(data) and _ends_early(image, data, scale):
            raise DecodeError("truncated", "JPEG data ends before the image does (the rest would be grey fill)")
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DecodeError("truncated", f"image data is truncated or corrupt ({exc})") from exc
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _ends_early(image: Image.Image, data: bytes, scale: int = 1) -> bool:
    """Whether libjpeg met the EOI before the last scan's data was complete.

    libjpeg then decodes the missing blocks as all-zero coefficients: exact mid-grey in L and
    RGB, and only warns. A grey bottom-right corner is the cheap hint; the proof is a second
    decode with zero bytes slipped in before the EOI: a complete scan never reads them (zeros
    are also what libjpeg assumes past a marker), a cut-short one decodes them as blocks.
    """
    if image.mode not in ("L", "RGB"):
        return False
    width, height = image.size
    block = max(1, 8 // scale)  # the last 8x8 block, as large as it is decoded
    corner = np.asarray(image.crop((max(0, width - block), max(0, height - block), width, height)))
    if not (corner == 128).all():
        return False
    end = jpeg_end(data, max_scans=1 << 30)  # open_header already capped the scans
    probe = Image.open(io.BytesIO(data[:end] + _PROBE_PADDING + data[end:]), formats=["JPEG"])
    try:
        if scale > 1:
            probe.draft(probe.mode, (probe.width // scale, probe.height // scale))
        probe.load()
    except (OSError, ValueError, SyntaxError, EOFError):
        return True
    return probe.tobytes() != image.tobytes()


def decode_image(data: bytes, max_pixels: int = 40_000_000, max_side: int = 12_000,
                 max_scans: int = 100) -> Image.Image:
    """Bytes of any supported format (whatever the URL claimed) -> upright RGB image."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return to_upright_rgb(open_header(data, max_pixels, max_side, max_scans), data)


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """Re-encode decoded pixels: no original metadata or trailing payload survives."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=False)
    return buffer.getvalue()


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)
