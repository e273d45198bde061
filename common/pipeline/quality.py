"""Image quality checks: each a small pure function returning a score; `assess` applies thresholds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.config import Settings
from common.pipeline import decode  # noqa: F401  (sets OpenCV decode limits before cv2 loads)

import cv2  # noqa: E402

# Below this size brightness/entropy statistics are stable and cheap to compute.
_STATS_SIDE = 256


def downscale_long_side(pixels: np.ndarray, side: int) -> np.ndarray:
    """Shrink by a whole factor so the long side is at most `side` (between side/2 and side).

    OpenCV averages areas by a whole factor 20x faster than by a fractional one, and a whole
    factor needs no interpolation, which would blur the very edges sharpness is measured on.
    """
    height, width = pixels.shape[:2]
    factor = -(-max(height, width) // side)  # ceiling division
    if factor <= 1:
        return pixels
    # Trim the < factor leftover rows and columns, so the factor is exact (the fast path).
    pixels = pixels[: height - height % factor or height, : width - width % factor or width]
    return cv2.resize(pixels, (max(1, width // factor), max(1, height // factor)), interpolation=cv2.INTER_AREA)


def sharpness(pixels: np.ndarray, side: int = 512) -> float:
    """Laplacian variance of the grey image downscaled to a fixed long side, so a big picture's fine
    pixels do not hide its blur. Never upscaled: interpolation would make sharp small images blurry."""
    gray = cv2.cvtColor(downscale_long_side(pixels, side), cv2.COLOR_RGB2GRAY)
    # The Laplacian of 8-bit pixels is whole numbers, exact in float32; meanStdDev sums in double.
    # The variance is numpy's .var() of a float64 Laplacian, four to five times faster.
    _, std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F))
    return float(std[0, 0]) ** 2


def brightness(pixels: np.ndarray) -> np.ndarray:
    """Per-pixel perceived brightness in [0, 1] (the weights cleanvision uses)."""
    rgb = pixels.astype(np.float32)
    weighted = 0.241 * rgb[..., 0] ** 2 + 0.691 * rgb[..., 1] ** 2 + 0.068 * rgb[..., 2] ** 2
    return np.sqrt(weighted) / 255.0


def entropy(pixels: np.ndarray) -> float:
    """Shannon entropy in bits of the pooled R, G, B histogram (as PIL's Image.entropy)."""
    counts = np.concatenate([np.bincount(pixels[..., c].ravel(), minlength=256) for c in range(3)])
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def aspect_ratio(width: int, height: int) -> float:
    return max(width, height) / max(1, min(width, height))


@dataclass(frozen=True)
class Assessment:
    scores: dict[str, float]
    reason: str | None = None
    detail: str | None = None


def assess_size(width: int, height: int, settings: Settings) -> Assessment:
    """The checks that need only the header: run them before decoding pixels."""
    scores = {"min_side": float(min(width, height)), "aspect_ratio": round(aspect_ratio(width, height), 4)}
    if min(width, height) < settings.min_side:
        return Assessment(scores, "too_small", f"{width}x{height}: shorter side below {settings.min_side} px")
    if scores["aspect_ratio"] > settings.max_aspect_ratio:
        detail = f"{width}x{height}: aspect ratio {scores['aspect_ratio']:.2f} above {settings.max_aspect_ratio}"
        return Assessment(scores, "bad_aspect_ratio", detail)
    return Assessment(scores)


def assess_pixels(pixels: np.ndarray, settings: Settings) -> Assessment:
    """Sharpness, darkness, washed-out and information checks on upright RGB pixels (any size;
    sharpness is measured at most `sharpness_side` wide, so a copy already that small is used as is)."""
    small = downscale_long_side(pixels, _STATS_SIDE)
    p99, p5 = np.percentile(brightness(small), [99, 5])  # one partial sort for both
    scores = {
        "sharpness": round(sharpness(pixels, settings.sharpness_side), 2),
        "brightness_p99": round(float(p99), 4),
        "brightness_p5": round(float(p5), 4),
        "entropy": round(entropy(small), 4),
    }
    # Darkness and washed-out first: a dim picture also has a low Laplacian variance.
    checks = [
        ("too_dark", scores["brightness_p99"] < settings.dark_p99, f"p99 brightness {scores['brightness_p99']:.3f} < {settings.dark_p99}"),
        ("washed_out", scores["brightness_p5"] > settings.light_p5, f"p5 brightness {scores['brightness_p5']:.3f} > {settings.light_p5}"),
        ("low_information", scores["entropy"] < settings.min_entropy, f"entropy {scores['entropy']:.2f} < {settings.min_entropy}"),
        ("blurry", scores["sharpness"] < settings.min_sharpness, f"sharpness {scores['sharpness']:.1f} < {settings.min_sharpness}"),
    ]
    for reason, failed, detail in checks:
        if failed:
            return Assessment(scores, reason, detail)
    return Assessment(scores)
