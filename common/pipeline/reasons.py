"""Every drop reason: its code, the stage that gives it and a sentence. Imports nothing of the
project, so the report, the API and the dashboard explain a reason without loading its stage."""

from __future__ import annotations

from dataclasses import dataclass

DOWNLOAD, QUALITY, DUPLICATES, SELECTION = "download", "quality", "duplicates", "selection"
HTTP_STATUS = "http_<status>"  # stands for every http_404, http_500 ...


@dataclass(frozen=True)
class Reason:
    stage: str
    description: str


REASONS: dict[str, Reason] = {
    # Download (fetch.py), and the service giving up a URL whose fetching worker kept dying.
    "invalid_url": Reason(DOWNLOAD, "not a well-formed http(s) URL (scheme, host, user info, length)"),
    "blocked_address": Reason(DOWNLOAD, "points at a private, local or cloud-metadata address or a disallowed port"),
    "duplicate_url": Reason(DOWNLOAD, "the same URL appeared earlier in the list and was fetched once"),
    HTTP_STATUS: Reason(DOWNLOAD, "the server answered with this HTTP error status"),
    "timeout": Reason(DOWNLOAD, "no complete answer within the connect/read/total time limits"),
    "connection_error": Reason(DOWNLOAD, "the connection failed or broke off"),
    "too_many_redirects": Reason(DOWNLOAD, "more redirects than allowed"),
    "too_large": Reason(DOWNLOAD, "the body is larger than the byte cap"),
    "not_an_image": Reason(DOWNLOAD, "the bytes are not JPEG, PNG, WebP, GIF or BMP, whatever the headers say"),
    "robots_noai": Reason(DOWNLOAD, "the server opted out with X-Robots-Tag (noai, noimageai, noindex, noimageindex)"),
    "empty_body": Reason(DOWNLOAD, "the server sent no bytes"),
    "worker_lost": Reason(DOWNLOAD, "the worker fetching it died repeatedly; the URL was given up"),
    # Decoding (decode.py, decode_pool.py) and the quality checks (quality.py).
    "decode_error": Reason(QUALITY, "not a readable image"),
    "truncated": Reason(QUALITY, "image data truncated or corrupt"),
    "decompression_bomb": Reason(QUALITY, "declares more pixels than the decode limit"),
    "too_many_scans": Reason(QUALITY, "a progressive JPEG with more scans than allowed (each scan is another pass "
                                      "over the whole image)"),
    "decode_timeout": Reason(QUALITY, "decoding and checking took longer than allowed; its decoder process was stopped"),
    "too_small": Reason(QUALITY, "shorter side below the minimum"),
    "bad_aspect_ratio": Reason(QUALITY, "too long and thin"),
    "blurry": Reason(QUALITY, "Laplacian variance (downscaled to a fixed size) below the minimum"),
    "too_dark": Reason(QUALITY, "99th percentile brightness below the minimum"),
    "washed_out": Reason(QUALITY, "5th percentile brightness above the maximum"),
    "low_information": Reason(QUALITY, "colour entropy below the minimum (flat or nearly blank)"),
    # Duplicates (collect.py for bytes, dedup.py for the rest).
    "duplicate_bytes": Reason(DUPLICATES, "the same file was already downloaded from another URL"),
    "duplicate_pixels": Reason(DUPLICATES, "identical pixels to a better copy"),
    "near_duplicate_phash": Reason(DUPLICATES, "perceptual hash and thumbnail pixels match a better copy"),
    "near_duplicate_embedding": Reason(DUPLICATES, "CLIP embedding nearly identical to a better copy, confirmed by "
                                                   "the thumbnail pixels"),
    # The cluster choice (select.py).
    "no_cluster": Reason(SELECTION, "not close enough to any group of similar images"),
    "other_cluster": Reason(SELECTION, "belongs to a group other than the one kept"),
    "over_limit": Reason(SELECTION, "the kept group has more images than asked for (--limit, or --balance across "
                                    "classes); the best matches were kept"),
    "excluded": Reason(SELECTION, "matches a negative prompt (--exclude) better than the query; its group, or it "
                                  "alone"),
    "ambiguous_class": Reason(SELECTION, "two classes would keep it and it matches their texts nearly equally "
                                         "(within --class-margin on the logit scale); kept in neither"),
}


def _entry(code: str) -> Reason | None:
    return REASONS[HTTP_STATUS] if code.startswith("http_") else REASONS.get(code)


def stage_of(code: str) -> str:
    """download, quality, duplicates or selection (an unknown code counts as selection)."""
    entry = _entry(code)
    return entry.stage if entry else SELECTION


def explain(code: str) -> str:
    """The sentence for a code, `http_404` included; the code itself when it is unknown."""
    entry = _entry(code)
    return entry.description if entry else code


def catalogue() -> dict[str, dict[str, str]]:
    """code -> {stage, description}, as GET /api/reasons serves it."""
    return {code: {"stage": r.stage, "description": r.description} for code, r in REASONS.items()}
