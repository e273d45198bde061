"""Decode untrusted image bytes safely: header limits first, then pixels, upright RGB out."""

from __future__ import annotations

import io
import os
import warnings

# OpenCV reads its decode limits once, at import; set them before anyone imports cv2.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "40000000")
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_WIDTH", "12000")
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_HEIGHT", "12000")

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


class DecodeError(Exception):
    """An image that cannot be used at all; `reason` is the report's drop code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def open_header(data: bytes, max_pixels: int, max_side: int) -> Image.Image:
    """Parse only the header and refuse oversized images before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError("decompression_bomb", f"image declares too many pixels ({exc})") from exc
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DecodeError("decode_error", f"not a readable JPEG/PNG/WebP/GIF/BMP image ({exc})") from exc
    width, height = image.size
    if width * height > max_pixels or max(width, height) > max_side:
        raise DecodeError(
            "decompression_bomb",
            f"{width}x{height} exceeds the decode limit ({max_pixels} pixels, {max_side} px a side)",
        )
    if width < 1 or height < 1:
        raise DecodeError("decode_error", f"image has an empty size {width}x{height}")
    return image


def to_upright_rgb(image: Image.Image) -> Image.Image:
    """Decode the first frame fully, apply EXIF orientation, flatten alpha onto white."""
    try:
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DecodeError("truncated", f"image data is truncated or corrupt ({exc})") from exc
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def decode_image(data: bytes, max_pixels: int = 40_000_000, max_side: int = 12_000) -> Image.Image:
    """Bytes of any supported format (whatever the URL claimed) -> upright RGB image."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return to_upright_rgb(open_header(data, max_pixels, max_side))


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """Re-encode decoded pixels: no original metadata or trailing payload survives."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=False)
    return buffer.getvalue()


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)
