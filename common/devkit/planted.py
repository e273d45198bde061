"""Hostile and low-quality images, and every format search results carry, generated in memory.

Each function returns encoded bytes; `planted_set` gives the whole collection with the drop
reason the pipeline must report for it (None for images that must survive the checks).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageFilter


def photo(seed: int = 0, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A sharp, colourful, textured picture that passes every quality check."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        128 + 100 * np.sin(xx / rng.uniform(8, 30) + rng.uniform(0, 6)),
        128 + 100 * np.cos(yy / rng.uniform(8, 30) + rng.uniform(0, 6)),
        128 + 100 * np.sin((xx + yy) / rng.uniform(10, 40)),
    ], axis=-1)
    noise = rng.normal(0, 25, (height, width, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    for _ in range(6):  # solid blocks make it asymmetric, so orientation is testable
        x, y = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
        pixels[y : y + 50, x : x + 50] = rng.integers(0, 255, 3)
    return Image.fromarray(pixels, "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def progressive_jpeg(image: Image.Image) -> bytes:
    return encode(image, "JPEG", quality=90, progressive=True)


def cmyk_jpeg(image: Image.Image) -> bytes:
    return encode(image.convert("CMYK"), "JPEG", quality=90)


def alpha_png(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:20, :20] = 0  # a transparent corner: flattened onto white
    rgba.putalpha(Image.fromarray(alpha))
    return encode(rgba, "PNG")


def palette_png(image: Image.Image) -> bytes:
    return encode(image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG")


def webp(image: Image.Image) -> bytes:
    return encode(image, "WEBP", quality=90)


def animated_gif(image: Image.Image) -> bytes:
    """Two frames; the first is the picture, the second is black."""
    first = image.convert("P", palette=Image.Palette.ADAPTIVE)
    second = Image.new("P", image.size, 0)
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=[second], duration=100, loop=0)
    return buffer.getvalue()


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    """Pixels stored rotated, with EXIF orientation 6 saying how to show them upright."""
    stored = image.transpose(Image.Transpose.ROTATE_90)  # orientation 6 rotates back by 270
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=92, exif=exif.tobytes())


def truncated_jpeg(image: Image.Image) -> bytes:
    data = encode(image, "JPEG", quality=90)
    return data[: len(data) // 2]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def decompression_bomb_png(side: int = 100_000) -> bytes:
    """A PNG header declaring side x side pixels over a few bytes of data."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    rows = zlib.compress(b"\x00" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def tiny(seed: int = 1) -> bytes:
    return encode(photo(seed, (120, 90)), "JPEG", quality=90)


def blurry(seed: int = 2) -> bytes:
    return encode(photo(seed).filter(ImageFilter.GaussianBlur(8)), "JPEG", quality=90)


def dark(seed: int = 3) -> bytes:
    pixels = np.asarray(photo(seed), np.float32) * 0.12
    return encode(Image.fromarray(pixels.astype(np.uint8)), "JPEG", quality=90)


def washed_out(seed: int = 4) -> bytes:
    pixels = 255 - (255 - np.asarray(photo(seed), np.float32)) * 0.05
    return encode(Image.fromarray(pixels.astype(np.uint8)), "JPEG", quality=90)


def low_information(size: tuple[int, int] = (480, 360)) -> bytes:
    """A sharp two-tone graphic: crisp edges, almost no information."""
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    board = (((xx // 40) + (yy // 40)) % 2 * 255).astype(np.uint8)
    return encode(Image.fromarray(np.stack([board] * 3, axis=-1)), "PNG")


def long_strip(seed: int = 5) -> bytes:
    return encode(photo(seed, (1500, 320)), "JPEG", quality=90)


def planted_set() -> dict[str, tuple[bytes, str | None]]:
    """Name -> (bytes, expected drop reason). Reasons None must pass the per-image checks."""
    good = photo(10)
    return {
        "progressive.jpg": (progressive_jpeg(photo(11)), None),
        "cmyk.jpg": (cmyk_jpeg(photo(12)), None),
        "alpha.png": (alpha_png(photo(13)), None),
        "palette.png": (palette_png(photo(14)), None),
        "picture.webp": (webp(photo(15)), None),
        "animated.gif": (animated_gif(photo(16)), None),
        "rotated.jpg": (exif_rotated_jpeg(good), None),
        "tiny.jpg": (tiny(), "too_small"),
        "blurry.jpg": (blurry(), "blurry"),
        "dark.jpg": (dark(), "too_dark"),
        "washed.jpg": (washed_out(), "washed_out"),
        "flat.png": (low_information(), "low_information"),
        "strip.jpg": (long_strip(), "bad_aspect_ratio"),
        "truncated.jpg": (truncated_jpeg(photo(17)), "truncated"),
        "bomb.png": (decompression_bomb_png(), "decompression_bomb"),
    }
