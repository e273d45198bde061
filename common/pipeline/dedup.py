"""Duplicate detection before clustering: exact pixels, confirmed perceptual hash, CLIP near-copies.

A pHash match alone is never proof: distinct pictures of regular patterns (stripes, checks, text)
collide under pHash, so a hash match must be confirmed by the pixels: the grey thumbnails must
line up (shape) and a coarse colour layout must agree (the same stripes in other colours are
another picture).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import xxhash
from PIL import Image

_THUMB_SIDE = 32
_MARGIN = 3  # thumbnail pixels trimmed from each side of the template: room for light crops
_SCALES = (1.0, 1.06, 1.12)  # how much larger a crop's content appears than in its original
_LAYOUT_SIDE = 4  # the colour layout: mean RGB over a 4x4 grid
_BLOCK = 1024  # rows per block of pairwise comparisons: memory stays flat for 10k images
_PHASH_SIDE, _PHASH_BITS = 32, 8
# The first 8 rows of the unnormalised DCT-II over 32 samples (scipy's dct, as pHash uses it):
# two small matrix products give the 8x8 low frequencies without a full transform.
_DCT_ROWS = 2 * np.cos(np.pi * np.outer(np.arange(_PHASH_BITS), 2 * np.arange(_PHASH_SIDE) + 1) / (2 * _PHASH_SIDE))


@dataclass(frozen=True)
class Fingerprint:
    pixel_hash: str
    phash: int
    thumb: np.ndarray  # small grey thumbnail (uint8), to confirm a pHash match by its pixels
    layout: np.ndarray  # 4x4 mean colours (float32), so recoloured look-alikes are told apart


def fingerprint(image: Image.Image, small: Image.Image | None = None) -> Fingerprint:
    """Signals that identify copies of one picture across resizing, re-encoding and light crops.

    `small` is an optional downscaled copy: every signal but the exact-pixel hash is computed
    from it, which is as good (they all work on tiny thumbnails) and much faster.
    """
    # Exact pixels as decoded (a large JPEG at its DCT draft scale: the same pixels decode the same
    # way), compared for equality only: xxh3 is ~4x faster than sha1.
    pixel_hash = xxhash.xxh3_128_hexdigest(image.tobytes())
    small = small or image
    grey = small.convert("L")
    thumb = np.asarray(grey.resize((_THUMB_SIDE, _THUMB_SIDE), Image.Resampling.BOX), np.uint8)
    layout = np.asarray(small.resize((_LAYOUT_SIDE, _LAYOUT_SIDE), Image.Resampling.BOX), np.float32)
    return Fingerprint(pixel_hash, phash(grey), thumb, layout)


def phash(grey: Image.Image) -> int:
    """The 64-bit perceptual hash (imagehash.phash's bits, as an int): which of the 8x8 lowest DCT
    frequencies of a 32x32 LANCZOS thumbnail lie above their median."""
    pixels = np.asarray(grey.resize((_PHASH_SIDE, _PHASH_SIDE), Image.Resampling.LANCZOS), np.float64)
    # Rounded: frequencies a flat or striped picture lacks are zero give or take float noise, and
    # noise must not decide which side of the median they fall.
    low = np.round(_DCT_ROWS @ pixels @ _DCT_ROWS.T, 6)
    return int.from_bytes(np.packbits(low > np.median(low)).tobytes(), "big")


def colour_difference(a: Fingerprint, b: Fingerprint) -> float:
    """Mean absolute difference of the colour layouts, in 0-255 units."""
    return float(np.abs(a.layout - b.layout).mean())


def aligned_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation of one thumbnail's centre anywhere in the other, at crop-like scales.

    Resized and re-encoded copies score ~1 at scale 1; a lightly cropped copy lines up at a
    small shift and scale. Distinct patterns differ in frequency, angle or colour and do not.
    """
    best = -1.0
    for search, inner in ((a, b), (b, a)):
        template = inner[_MARGIN:-_MARGIN, _MARGIN:-_MARGIN].astype(np.float32)
        if float(template.std()) < 1e-3:
            continue  # a flat template correlates with nothing; exact pixels decide those
        for scale in _SCALES:
            side = round(_THUMB_SIDE * scale)
            grown = cv2.resize(search, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32)
            best = max(best, float(cv2.matchTemplate(grown, template, cv2.TM_CCOEFF_NORMED).max()))
    return best


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _hamming(block: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    xor = block[:, None] ^ hashes[None, :]
    return np.unpackbits(xor.view(np.uint8).reshape(*xor.shape, 8), axis=-1).sum(axis=-1)


def duplicate_pairs(
    fingerprints: Sequence[Fingerprint],
    embeddings: np.ndarray,
    phash_distance: int,
    pixel_correlation: float,
    embedding_cosine: float,
    colour_difference_max: float = 10.0,
) -> list[tuple[int, int, str]]:
    """Every pair (i < j) that counts as a copy, with the signal that proved it."""
    n = len(fingerprints)
    hashes = np.array([f.phash for f in fingerprints], dtype=np.uint64)
    pairs: list[tuple[int, int, str]] = []
    for start in range(0, n, _BLOCK):
        rows = slice(start, min(n, start + _BLOCK))
        near_vector = embeddings[rows] @ embeddings.T >= embedding_cosine
        near_hash = _hamming(hashes[rows], hashes) <= phash_distance
        for local_i, j in zip(*np.nonzero(near_vector | near_hash)):
            i, j = start + int(local_i), int(j)
            if j > i:
                confirm = (pixel_correlation, colour_difference_max)
                reason = _pair_reason(fingerprints[i], fingerprints[j], bool(near_vector[local_i, j]),
                                      bool(near_hash[local_i, j]), confirm)
                if reason:
                    pairs.append((i, j, reason))
    return pairs


def look_alike_groups(
    fingerprints: Sequence[Fingerprint], embeddings: np.ndarray, embedding_cosine: float, phash_distance: int
) -> list[int]:
    """A group id per picture: pictures joined by any proposed copy pair, confirmed or not
    (what must not straddle train and test)."""
    n = len(fingerprints)
    hashes = np.array([f.phash for f in fingerprints], dtype=np.uint64)
    groups = _UnionFind(n)
    for start in range(0, n, _BLOCK):
        rows = slice(start, min(n, start + _BLOCK))
        near = (embeddings[rows] @ embeddings.T >= embedding_cosine) | (_hamming(hashes[rows], hashes) <= phash_distance)
        for local_i, j in zip(*np.nonzero(near)):
            groups.union(start + int(local_i), int(j))
    return [groups.find(i) for i in range(n)]


def _pair_reason(
    a: Fingerprint, b: Fingerprint, near_vector: bool, near_hash: bool, confirm: tuple[float, float]
) -> str | None:
    if a.pixel_hash == b.pixel_hash:
        return "duplicate_pixels"
    # Either signal only proposes a pair: distinct patterned pictures share pHashes and sit close in
    # CLIP space alike, so the thumbnail pixels and colour layout must confirm the copy.
    min_correlation, max_colour_difference = confirm
    if not (colour_difference(a, b) <= max_colour_difference
            and aligned_correlation(a.thumb, b.thumb) >= min_correlation):
        return None
    return "near_duplicate_phash" if near_hash else "near_duplicate_embedding"


def choose_keepers(pairs: list[tuple[int, int, str]], quality: Sequence[tuple[float, ...]]) -> dict[int, tuple[int, str]]:
    """Group copies; keep the best of each group (by the quality tuple, e.g. pixels then sharpness).

    Returns {dropped index: (kept index, reason)}.
    """
    groups = _UnionFind(len(quality))
    reason_of: dict[int, str] = {}
    for i, j, reason in pairs:
        groups.union(i, j)
        reason_of.setdefault(i, reason)
        reason_of.setdefault(j, reason)
    members: dict[int, list[int]] = {}
    for i in reason_of:
        members.setdefault(groups.find(i), []).append(i)
    dropped: dict[int, tuple[int, str]] = {}
    for group in members.values():
        best = max(group, key=lambda k: (quality[k], -k))
        for k in group:
            if k != best:
                dropped[k] = (best, reason_of[k])
    return dropped
