"""A realistic, fully offline set of search results served from 127.0.0.1.

The target class, a look-alike, a bigger off-topic group, patterned pictures, the target in every
format search results carry, copies of target pictures, hostile files and misbehaving URLs, each
with the outcome the pipeline must give it. Used by the end-to-end tests, `cvdb demo` and bench/.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from common.devkit import corpus, planted
from common.devkit.image_server import ImageServer

# Outcomes the scenario asserts on: an exact drop reason, or one of these markers.
KEPT = "kept"  # must be in the dataset (query selection)
CLUSTERED_AWAY = "clustered_away"  # passes every check, dropped only by cluster selection

FORMAT_VARIANTS: dict[str, tuple[str, Callable[[Image.Image], bytes]]] = {
    "progressive.jpg": ("image/jpeg", planted.progressive_jpeg),
    "cmyk.jpg": ("image/jpeg", planted.cmyk_jpeg),
    "alpha.png": ("image/png", planted.alpha_png),
    "palette.png": ("image/png", planted.palette_png),
    "picture.webp": ("image/webp", planted.webp),
    "animated.gif": ("image/gif", planted.animated_gif),
    "rotated.jpg": ("image/jpeg", planted.exif_rotated_jpeg),
    "lying-extension.jpg": ("image/jpeg", lambda im: planted.encode(im, "PNG")),  # a PNG behind .jpg
}

MISBEHAVING: dict[str, str] = {
    "/status/404": "http_404",
    "/status/500": "http_500",
    "/html": "not_an_image",
    "/fake.jpg": "not_an_image",
    "/noai.jpg": "robots_noai",
    "/redirect-private": "blocked_address",
    "/oversized.jpg": "too_large",
    "/empty.jpg": "empty_body",
}


@dataclass
class Scenario:
    urls: list[str] = field(default_factory=list)  # in search-result order
    expected: dict[str, str] = field(default_factory=dict)  # url -> drop reason, KEPT or CLUSTERED_AWAY
    labels: dict[str, str] = field(default_factory=dict)  # url -> corpus class, for corpus pictures
    upright: dict[str, Image.Image] = field(default_factory=dict)  # url -> how a kept picture must look
    copy_of: dict[str, str] = field(default_factory=dict)  # copy url -> original url: one of each pair survives

    def add(self, url: str, expected: str, label: str | None = None) -> None:
        self.urls.append(url)
        self.expected[url] = expected
        if label:
            self.labels[url] = label


def _jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


DEFAULT_COUNTS = {corpus.TARGET: 12, corpus.LOOKALIKE: 10, corpus.DISTRACTOR: 30,
                  corpus.PATTERNED[0]: 10, corpus.PATTERNED[1]: 10}


def build_scenario(server: ImageServer, seed: int = 0, counts: Mapping[str, int] | None = None) -> Scenario:
    """Register every picture and behaviour on `server`; interleave them like real results."""
    rng = np.random.default_rng(seed)
    scenario = Scenario()
    targets: list[tuple[str, Image.Image]] = []
    for name, n in (counts or DEFAULT_COUNTS).items():
        slug = name.replace(" ", "-")
        for i in range(n):
            image = corpus.render(name, rng)
            expected = KEPT if name == corpus.TARGET else CLUSTERED_AWAY
            url = server.add(f"/corpus/{slug}-{i:03d}.jpg", _jpeg(image))
            scenario.add(url, expected, name)
            if name == corpus.TARGET:
                targets.append((url, image))
    _add_target_variants(server, scenario, [corpus.render(corpus.TARGET, rng) for _ in FORMAT_VARIANTS])
    _add_copies(server, scenario, targets)
    for name, (data, reason) in planted.planted_set().items():
        if reason is not None:
            scenario.add(server.add(f"/planted/{name}", data, "image/jpeg"), reason)
    for path, reason in MISBEHAVING.items():
        scenario.add(server.url(path), reason)
    order = rng.permutation(len(scenario.urls))
    scenario.urls = [scenario.urls[i] for i in order]
    return scenario


def _add_target_variants(server: ImageServer, scenario: Scenario, images: list[Image.Image]) -> None:
    """The target in every format, so the dataset proves each decodes upright and survives."""
    for (name, (content_type, encoder)), image in zip(FORMAT_VARIANTS.items(), images):
        url = server.add(f"/formats/{name}", encoder(image), content_type)
        scenario.add(url, KEPT, corpus.TARGET)
        scenario.upright[url] = image


def _add_copies(server: ImageServer, scenario: Scenario, originals: list[tuple[str, Image.Image]]) -> None:
    """Copies of target pictures: the same bytes again, re-encoded, resized, lightly cropped.

    Which of a pair survives depends on size and sharpness, so tests check one of each pair does.
    """
    (url1, first), (url2, second), (url3, third) = originals[:3]
    w, h = first.size
    copies = {
        "/copies/same-bytes.jpg": (_jpeg(first), url1, "duplicate_bytes"),
        "/copies/reencoded.jpg": (_jpeg(second, 60), url2, "near_duplicate"),
        "/copies/resized.jpg": (_jpeg(third.resize((third.width * 3 // 4, third.height * 3 // 4))), url3, "near_duplicate"),
        "/copies/cropped.jpg": (_jpeg(first.crop((w // 40, h // 40, w - w // 40, h - h // 40))), url1, "near_duplicate"),
    }
    for path, (data, original, expected) in copies.items():
        url = server.add(path, data)
        scenario.add(url, expected, corpus.TARGET)
        scenario.copy_of[url] = original
