"""Decoding untrusted bytes and each quality check, on generated images."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from common.config import Settings
from common.devkit import planted
from common.pipeline import quality
from common.pipeline.accept import (Checked, Rejected, StagedImage, check_download, decode_for_checks, encode_kept,
                                    stage_download)
from common.pipeline.decode import DecodeError, decode_image, draft_scale

SETTINGS = Settings()
PLANTED = planted.planted_set()


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_images_get_their_expected_outcome(name: str, tmp_path: Path) -> None:
    data, expected = PLANTED[name]
    result = stage_download(f"http://x/{name}", data, "?", "0" * 64, SETTINGS, tmp_path)
    if expected is None:
        assert isinstance(result, StagedImage), getattr(result, "detail", "")
        assert result.path.read_bytes() == data  # staged as downloaded
        [exported] = encode_kept([result], SETTINGS)
        jpeg = exported.path.read_bytes()
        assert jpeg[:3] == b"\xff\xd8\xff"  # exported as JPEG whatever came in
        assert exported.sha256 == hashlib.sha256(jpeg).hexdigest()
    else:
        assert isinstance(result, Rejected)
        assert result.reason == expected, result.detail


def test_exif_orientation_is_applied_before_anything_else() -> None:
    upright = planted.photo(10)
    decoded = decode_image(planted.exif_rotated_jpeg(upright))
    assert decoded.size == upright.size
    flipped = upright.transpose(Image.Transpose.ROTATE_180)
    assert _difference(decoded, upright) < 0.5 * _difference(decoded, flipped)  # JPEG loss only


def test_a_large_jpeg_is_checked_on_a_smaller_decode_with_its_full_size_reported() -> None:
    upright = planted.photo(21, size=(3000, 2200))
    for data in (planted.encode(upright, "JPEG", quality=90), planted.exif_rotated_jpeg(upright)):
        header = Image.open(io.BytesIO(data))
        assert draft_scale(header, SETTINGS.sharpness_side) == 2  # 3000 px: a whole factor of 6 to 512
        assert draft_scale(Image.open(io.BytesIO(planted.encode(planted.photo(1, (1500, 900))))), 512) == 1  # 3
        checked = check_download("u", data, SETTINGS)
        assert isinstance(checked, Checked), checked
        assert (checked.width, checked.height) == upright.size
        decoded, work, size = decode_for_checks(Image.open(io.BytesIO(data)), data, SETTINGS.sharpness_side)
        assert decoded.size == (1500, 1100) and size == upright.size
        # The working copy is the full decode's 1/6 area-average in size (the 1/2 decode shrunk by 3)
        # and nearly in pixels; the full decode is left for export.
        full = quality.downscale_long_side(np.asarray(decode_image(data)), SETTINGS.sharpness_side)
        assert work.shape == full.shape
        assert np.abs(work.astype(np.float32) - full).mean() < 2.0


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


def test_a_bomb_past_pillows_own_guard_is_refused_too() -> None:
    """10^10 pixels trip Pillow's MAX_IMAGE_PIXELS guard before the product's caps: same reason."""
    with pytest.raises(DecodeError) as caught:
        decode_image(planted.decompression_bomb_png(), max_pixels=40_000_000)
    assert caught.value.reason == "decompression_bomb"


def _solid_png(width: int, height: int) -> bytes:
    """A real, complete one-bit PNG of that size: a few kilobytes, whatever the size."""
    buffer = io.BytesIO()
    Image.new("1", (width, height), 1).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def pixel_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image whose pixels get decoded (Pillow's ImageFile.load)."""
    loads: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        loads.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return loads


# Just past the product's own caps (40 MP, 12,000 px a side) and far below Pillow's bomb guard
# (MAX_IMAGE_PIXELS, ~89 MP), so only the product's check can refuse them.
JUST_PAST_THE_CAPS = [(6_400, 6_251), (SETTINGS.max_side + 1, 1), (1, SETTINGS.max_side + 1)]
JUST_WITHIN_THE_CAPS = [(6_400, 6_250), (SETTINGS.max_side, 1), (1, SETTINGS.max_side)]


def test_the_caps_are_the_documented_defaults_and_below_pillows_guard() -> None:
    assert (SETTINGS.max_pixels, SETTINGS.max_side) == (40_000_000, 12_000)
    assert 6_400 * 6_250 == SETTINGS.max_pixels < Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize(("width", "height"), JUST_PAST_THE_CAPS)
def test_an_image_just_past_a_cap_is_refused_from_its_header(width: int, height: int,
                                                             pixel_loads: list[tuple[int, int]]) -> None:
    data = _solid_png(width, height)
    with pytest.raises(DecodeError) as caught:
        decode_image(data, SETTINGS.max_pixels, SETTINGS.max_side)
    assert caught.value.reason == "decompression_bomb"
    assert "exceeds the decode limit" in caught.value.detail  # the product's check, not Pillow's
    rejected = check_download("http://x/big.png", data, SETTINGS)  # the pipeline's path, settings included
    assert isinstance(rejected, Rejected) and rejected.reason == "decompression_bomb"
    assert pixel_loads == []


@pytest.mark.parametrize(("width", "height"), JUST_WITHIN_THE_CAPS)
def test_an_image_just_within_the_caps_is_decoded(width: int, height: int,
                                                  pixel_loads: list[tuple[int, int]]) -> None:
    decoded = decode_image(_solid_png(width, height), SETTINGS.max_pixels, SETTINGS.max_side)
    assert decoded.size == (width, height) and decoded.mode == "RGB"
    assert (width, height) in pixel_loads  # the spy sees real decodes


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


def test_sharpness_through_meanstddev_equals_numpys_variance_of_the_laplacian() -> None:
    """meanStdDev of a float32 Laplacian (whole numbers for 8-bit pixels) gives numpy's var of a
    float64 one, the definition the thresholds were set on."""
    import cv2

    from common.devkit import corpus

    rng = np.random.default_rng(5)
    for i, name in enumerate([corpus.TARGET, corpus.DISTRACTOR, corpus.LOOKALIKE, *corpus.PATTERNED] * 3):
        pixels = np.asarray(corpus.render(name, rng))
        grey = cv2.cvtColor(quality.downscale_long_side(pixels, 512), cv2.COLOR_RGB2GRAY)
        reference = float(cv2.Laplacian(grey, cv2.CV_64F).var())
        assert quality.sharpness(pixels, 512) == pytest.approx(reference, rel=1e-12), (i, name)
