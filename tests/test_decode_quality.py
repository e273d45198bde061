"""Decoding untrusted bytes and each quality check, on generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config import Settings
from common.devkit import planted
from common.pipeline import quality
from common.pipeline.accept import Rejected, StagedImage, stage_download
from common.pipeline.decode import DecodeError, decode_image

SETTINGS = Settings()
PLANTED = planted.planted_set()


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_images_get_their_expected_outcome(name: str, tmp_path: Path) -> None:
    data, expected = PLANTED[name]
    result = stage_download(f"http://x/{name}", data, "?", "0" * 64, SETTINGS, tmp_path)
    if expected is None:
        assert isinstance(result, StagedImage), getattr(result, "detail", "")
        assert result.path.read_bytes()[:3] == b"\xff\xd8\xff"  # exported as JPEG whatever came in
    else:
        assert isinstance(result, Rejected)
        assert result.reason == expected, result.detail


def test_exif_orientation_is_applied_before_anything_else() -> None:
    upright = planted.photo(10)
    decoded = decode_image(planted.exif_rotated_jpeg(upright))
    assert decoded.size == upright.size
    flipped = upright.transpose(Image.Transpose.ROTATE_180)
    assert _difference(decoded, upright) < 0.5 * _difference(decoded, flipped)  # JPEG loss only


def _difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def test_gif_decodes_its_first_frame_not_the_black_second() -> None:
    decoded = np.asarray(decode_image(planted.animated_gif(planted.photo(16))))
    assert decoded.mean() > 60


def test_transparent_pixels_are_flattened_onto_white() -> None:
    decoded = np.asarray(decode_image(planted.alpha_png(planted.photo(13))))
    assert (decoded[:20, :20] == 255).all()


def test_cmyk_jpeg_comes_out_with_the_right_colours() -> None:
    source = planted.photo(12)
    decoded = decode_image(planted.cmyk_jpeg(source))
    assert decoded.mode == "RGB"
    assert _difference(decoded, source) < 0.5 * _difference(decoded, Image.eval(source, lambda v: 255 - v))


def test_bomb_is_refused_from_its_header_without_decoding() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_image(planted.decompression_bomb_png(), max_pixels=40_000_000)
    assert caught.value.reason == "decompression_bomb"


@pytest.mark.parametrize("data", [b"", b"<html>not an image</html>", b"\xff\xd8\xff" + b"\x00" * 50])
def test_garbage_is_a_decode_error_not_an_exception(data: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_image(data)
    assert caught.value.reason in {"decode_error", "truncated"}


def test_sharpness_judges_big_and_small_copies_alike() -> None:
    big = _shapes(1600, 1200)
    small = np.asarray(Image.fromarray(big).resize((400, 300), Image.Resampling.LANCZOS))
    ratio = quality.sharpness(big) / quality.sharpness(small)
    assert 0.5 < ratio < 2.0
    raw = quality.sharpness(big, side=1600) / quality.sharpness(small, side=400)
    assert raw < 0.5 or raw > 2.0  # measured at their own sizes they would be judged apart


def _shapes(width: int, height: int) -> np.ndarray:
    """A crisp scene (no pixel noise), so a downscaled copy is as sharp as the original."""
    rng = np.random.default_rng(0)
    pixels = np.full((height, width, 3), 200, np.uint8)
    for _ in range(40):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 20, width // 4)), int(rng.integers(height // 20, height // 4))
        pixels[y : y + h, x : x + w] = rng.integers(0, 255, 3)
    return pixels


def test_entropy_matches_pillow() -> None:
    image = planted.photo(21)
    assert quality.entropy(np.asarray(image)) == pytest.approx(image.entropy(), rel=1e-3)


def test_every_threshold_is_a_setting() -> None:
    strict = Settings(min_side=1000)
    result = quality.assess_size(800, 600, strict)
    assert result.reason == "too_small"
    assert quality.assess_size(800, 600, Settings()).reason is None
