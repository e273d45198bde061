"""A synthetic, seeded image corpus that stands in for image-search results in tests and benchmarks.

Each class is a simple visual concept drawn with PIL and numpy: a target ("sunflower"), a look-alike
that shares its colours and layout ("sun"), a larger off-topic distractor ("red apple") and two
regular patterns whose distinct pictures collide under perceptual hash. Every picture is built to
pass the pipeline's quality filters (size, sharpness, brightness, entropy).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class CorpusClass:
    name: str
    captions_en: tuple[str, ...]
    captions_ko: tuple[str, ...]


# The first English caption of each class is the pipeline's default prompt, "a photo of {query}".
_CLASS_LIST = (
    CorpusClass(
        "sunflower",
        ("a photo of sunflower", "a photo of a sunflower", "sunflower", "sunflowers in a field",
         "a yellow sunflower in bloom", "a picture of sunflowers"),
        ("해바라기 사진", "해바라기", "해바라기 꽃", "활짝 핀 해바라기", "들판의 해바라기"),
    ),
    CorpusClass(
        "sun",
        ("a photo of sun", "a photo of the sun", "the sun", "the sun in a blue sky",
         "bright sunshine", "a sunny sky"),
        ("태양 사진", "태양", "해", "파란 하늘의 태양", "밝은 햇빛"),
    ),
    CorpusClass(
        "red apple",
        ("a photo of red apple", "a photo of a red apple", "red apple", "red apples on a wooden table",
         "a shiny red apple", "fresh apples"),
        ("빨간 사과 사진", "빨간 사과", "사과", "나무 테이블 위의 사과", "신선한 사과"),
    ),
    CorpusClass(
        "striped fabric",
        ("a photo of striped fabric", "striped fabric", "a striped textile", "fabric with stripes",
         "a striped cloth pattern"),
        ("줄무늬 천 사진", "줄무늬 천", "줄무늬 원단", "줄무늬 패턴"),
    ),
    CorpusClass(
        "checkerboard tiles",
        ("a photo of checkerboard tiles", "checkerboard tiles", "a checkered tile floor",
         "checkerboard pattern", "square floor tiles"),
        ("체크무늬 타일 사진", "체크무늬 타일", "바둑판 무늬 타일", "격자 타일 바닥"),
    ),
)
CLASSES: dict[str, CorpusClass] = {c.name: c for c in _CLASS_LIST}
TARGET = "sunflower"
LOOKALIKE = "sun"
DISTRACTOR = "red apple"
PATTERNED: tuple[str, ...] = ("striped fabric", "checkerboard tiles")

# The distractor outnumbers the target, so "keep the largest cluster" picks the wrong one.
DEFAULT_COUNTS: dict[str, int] = {TARGET: 12, LOOKALIKE: 8, DISTRACTOR: 20, PATTERNED[0]: 8, PATTERNED[1]: 8}


# ---------------------------------------------------------------- small drawing helpers
#
# Speed matters (benchmarks render thousands): smooth fields are quantised to uint8 indices and
# coloured through a 256-entry palette in PIL, and shapes are drawn with ImageDraw, all in C.

GRAIN_SIGMA = 9.0  # grey levels; keeps flat sky above the sharpness threshold after JPEG and resizing


def _size(rng: np.random.Generator) -> tuple[int, int]:
    """Width and height in 320..640 with aspect ratio within 1.5 (the filters allow up to 2)."""
    width = int(rng.integers(340, 641))
    aspect = float(np.exp(rng.uniform(np.log(0.67), np.log(1.5))))
    height = int(np.clip(round(width / aspect), 320, 640))
    return width, height


def _jitter(colour: RGB, rng: np.random.Generator, amount: int = 25) -> RGB:
    r, g, b = (int(c) for c in np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255))
    return r, g, b


def _random_colour(rng: np.random.Generator) -> RGB:
    r, g, b = (int(v) for v in rng.integers(20, 236, size=3))
    return r, g, b


def _contrasting_pair(rng: np.random.Generator, min_gap: float = 60.0) -> tuple[RGB, RGB]:
    """Two random colours whose grey levels differ enough for the pattern to read."""
    first = _random_colour(rng)
    while True:
        second = _random_colour(rng)
        if abs(np.dot(np.subtract(first, second), (0.299, 0.587, 0.114))) >= min_gap:
            return first, second


def _ramp(a: RGB, b: RGB, gamma: float = 1.0) -> np.ndarray:
    """A (256, 3) palette running from colour a to colour b."""
    t = np.linspace(0.0, 1.0, 256)[:, None] ** gamma
    return np.asarray(a, np.float64) + (np.asarray(b, np.float64) - np.asarray(a, np.float64)) * t


def _paint(index: np.ndarray, palette: np.ndarray) -> Image.Image:
    """Colour a uint8 index field through a (256, 3) palette."""
    image = Image.fromarray(np.ascontiguousarray(index, np.uint8))
    image.putpalette(np.clip(palette, 0, 255).astype(np.uint8).tobytes())
    return image.convert("RGB")


def _unit(field: np.ndarray) -> np.ndarray:
    """Rescale a float field to uint8 indices 0..255."""
    low, span = float(field.min()), max(1e-6, float(np.ptp(field)))
    return ((field - np.float32(low)) * np.float32(255.0 / span)).astype(np.uint8)


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(width, dtype=np.float32)[None, :], np.arange(height, dtype=np.float32)[:, None]


def _rotated(width: int, height: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in a frame rotated by `angle` radians (u along, v across)."""
    xs, ys = _grid(width, height)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return xs * c + ys * s, ys * c - xs * s


@lru_cache(maxsize=1)
def _grain_bank() -> np.ndarray:
    """One fixed field of Gaussian grain; images take random windows of it (cheaper than fresh noise)."""
    noise = np.random.default_rng(20240601).normal(0.0, GRAIN_SIGMA, (704, 704, 3))
    return np.round(noise).astype(np.int16)


def _finish(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Add sensor-like grain (real photos have it; it also keeps flat areas sharp enough)."""
    width, height = image.size
    top, left = int(rng.integers(0, 705 - height)), int(rng.integers(0, 705 - width))
    pixels = np.asarray(image, np.int16) + _grain_bank()[top : top + height, left : left + width]
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8))


# How often a pattern repeats along the image rows or columns, in pixels of a 64 px short-side view
# (what the tiny CLIP sees): 1.2-1.75 patches of 8 px, between the multiples. See `_axis_period`.
STRIPE_PERIOD = (9.5, 13.5)
TILE_PERIOD = (11.0, 14.0)


def _axis_period(width: int, height: int, angle: float, rng: np.random.Generator, model_pixels: tuple[float, float]) -> float:
    """The length, in image pixels, along a pattern's own axis that repeats it every `model_pixels`
    along the image axes (a 45-degree pattern repeats every length * sqrt(2) along x).

    Why: a ViT with 8 px patches cannot keep a pattern steady under a small crop when the period and
    the patch are whole multiples of each other (all patches then change alike, or flip between one
    colour and a mix), so periods stay between. They also stay 3+ thumbnail pixels, so 32 px
    thumbnails of distinct pictures differ.
    """
    along_axes = min(width, height) / 64 * float(rng.uniform(*model_pixels))
    return along_axes * max(abs(np.cos(angle)), abs(np.sin(angle)))


def _pattern_angle(rng: np.random.Generator, straight: tuple[float, ...], tilted: tuple[float, ...]) -> float:
    """Most patterns are photographed square to the frame (exactly), some at a tilt (roughly)."""
    if rng.random() < 0.6:
        return float(np.deg2rad(rng.choice(straight)))
    return float(np.deg2rad(rng.choice(tilted) + rng.uniform(-5, 5)))


def _glare(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Window light from one corner (mostly the top left), as an index field 0..15.

    Why it matters: an axis-aligned pattern puts its DCT energy in one row or column of pHash's 8x8
    block, so the rest of the block follows this shared light. Distinct patterns then collide under
    pHash, as they do in real search results, while their thumbnails stay uncorrelated.
    """
    xs, ys = _grid(width, height)
    fall_x, fall_y = np.float32(rng.uniform(1.5, 3.0) / width), np.float32(rng.uniform(1.5, 3.0) / height)
    light = np.exp(-xs * fall_x) * np.exp(-ys * fall_y)
    if rng.random() < 0.3:  # the light comes from another corner
        light = light[:: int(rng.choice([1, -1])), :: int(rng.choice([1, -1]))]
    return np.round((light - light.min()) * np.float32(15.0 / float(np.ptp(light)))).astype(np.uint8)


def _paint_with_glare(level: np.ndarray, colours: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Colour a pattern (levels 0..15 into a (16, 3) colour table) and add the glare on top."""
    width, height = level.shape[1], level.shape[0]
    strength = rng.uniform(40, 70)  # grey levels added at the brightest corner
    palette = colours[np.arange(256) // 16] + (strength * (np.arange(256) % 16) / 15)[:, None]
    return _paint(level * np.uint8(16) + _glare(width, height, rng), palette)


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill: RGB) -> None:
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def _leaf(draw: ImageDraw.ImageDraw, x: float, y: float, length: float, angle: float, fill: RGB) -> None:
    """A pointed leaf: a diamond from (x, y) along `angle`."""
    ux, uy = np.cos(angle), np.sin(angle)
    px, py = -uy * length * 0.28, ux * length * 0.28
    mx, my = x + ux * length * 0.45, y + uy * length * 0.45
    tip = (x + ux * length, y + uy * length)
    draw.polygon([(x, y), (mx + px, my + py), tip, (mx - px, my - py)], fill=fill)


def _star(cx: float, cy: float, angles: np.ndarray, radii: np.ndarray) -> list[tuple[float, float]]:
    """Polygon points at polar coordinates around (cx, cy)."""
    return [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a, r in zip(angles, radii)]


# ---------------------------------------------------------------- backgrounds


def _sky(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A blue gradient at a random tilt, darker at the top."""
    u, _ = _rotated(width, height, float(rng.uniform(np.pi / 2 - 0.5, np.pi / 2 + 0.5)))
    top, bottom = _jitter((60, 120, 205), rng, 30), _jitter((175, 210, 240), rng, 25)
    return _paint(_unit(u), _ramp(top, bottom, float(rng.uniform(0.6, 1.6))))


def _below(image: Image.Image, horizon: int, index: np.ndarray, palette: np.ndarray) -> None:
    """Replace everything under `horizon` with a painted index field."""
    image.paste(_paint(index, palette), (0, horizon))


def _clouds(draw: ImageDraw.ImageDraw, width: int, height: int, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height * 0.6)
        white = _jitter((240, 242, 246), rng, 10)
        for _ in range(int(rng.integers(3, 6))):
            r = rng.uniform(0.04, 0.09) * width
            _ellipse(draw, cx + rng.uniform(-2, 2) * r, cy + rng.uniform(-0.4, 0.4) * r, r * 1.4, r, white)


_WALLS: tuple[RGB, ...] = ((225, 215, 190), (120, 130, 150), (200, 90, 60), (70, 110, 80), (40, 40, 50), (235, 235, 235))


def _wooden_table(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A wall of a random colour (or none) above a table whose grain is wavy bands at a slight angle."""
    edge = int(height * rng.uniform(0.2, 0.55)) if rng.random() < 0.7 else 0
    wall_colour = _jitter(_WALLS[int(rng.integers(len(_WALLS)))], rng, 20)
    _, ys = _grid(width, height)
    wall = _paint(np.broadcast_to(_unit(ys), (height, width)), _ramp(wall_colour, _jitter(wall_colour, rng, 40)))
    u, v = _rotated(width, height - edge, float(rng.uniform(-0.3, 0.3)))
    wave = np.float32(rng.uniform(3, 12)) * np.sin(u / np.float32(rng.uniform(40, 160)))
    # Grain of 5-6.8 px in a 64 px short-side view: 1.2-1.6 periods per 8 px patch (see `_axis_period`).
    period = min(width, height) / 64 * rng.uniform(5.0, 6.8)
    grain = np.sin((v + wave) * np.float32(2 * np.pi / period))
    light, dark = _jitter((165, 112, 60), rng, 35), _jitter((110, 68, 35), rng, 30)
    _below(wall, edge, _unit(grain), _ramp(dark, light))
    return wall


# ---------------------------------------------------------------- classes


def _sunflower_head(draw: ImageDraw.ImageDraw, cx: float, cy: float, radius: float, rng: np.random.Generator) -> None:
    petals = int(rng.integers(14, 24))
    yellow, deep = _jitter((245, 200, 25), rng, 15), _jitter((230, 160, 20), rng, 15)
    spin, half = rng.uniform(0, 2 * np.pi), np.pi / petals * 0.9
    for i in range(petals):
        a = spin + 2 * np.pi * i / petals
        points = _star(cx, cy, np.array([a, a - half, a, a + half]), radius * np.array([0.4, 0.7, 1.0, 0.7]))
        draw.polygon(points, fill=yellow if i % 2 else deep)
    disc = radius * rng.uniform(0.38, 0.48)
    _ellipse(draw, cx, cy, disc, disc, _jitter((95, 55, 20), rng, 15))
    seeds = int(disc * 0.7)
    radii, angles = disc * np.sqrt(rng.uniform(0, 0.9, seeds)), rng.uniform(0, 2 * np.pi, seeds)
    dot, seed_colour = max(2.0, disc * 0.08), _jitter((55, 30, 10), rng, 12)
    for x, y in _star(cx, cy, angles, radii):
        _ellipse(draw, x, y, dot, dot, seed_colour)


def _render_sunflower(rng: np.random.Generator) -> Image.Image:
    width, height = _size(rng)
    image = _sky(width, height, rng)
    if rng.random() < 0.6:  # a green field below a random horizon
        horizon = int(height * rng.uniform(0.55, 0.85))
        field = rng.integers(0, 256, (height - horizon, width), dtype=np.uint8)
        _below(image, horizon, field, _ramp(_jitter((70, 140, 50), rng, 25), _jitter((40, 95, 30), rng, 20)))
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    for _ in range(int(rng.choice([1, 1, 2, 3]))):
        radius = side * rng.uniform(0.14, 0.32)
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius * 0.8)
        green = _jitter((50, 130, 40), rng, 20)
        draw.line([(cx, cy), (cx + rng.uniform(-20, 20), height)], fill=green, width=max(4, int(radius * 0.12)))
        for _ in range(int(rng.integers(1, 3))):
            y = cy + radius * rng.uniform(0.7, 2.0)  # somewhere on the stem, maybe below the frame
            _leaf(draw, cx, y, radius * rng.uniform(0.5, 0.9), rng.uniform(-2.8, -0.3), green)
        _sunflower_head(draw, cx, cy, radius, rng)
    return _finish(image, rng)


def _sun_disc(draw: ImageDraw.ImageDraw, cx: float, cy: float, radius: float, rng: np.random.Generator) -> None:
    core, glow = _jitter((255, 225, 70), rng, 12), _jitter((255, 190, 40), rng, 15)
    rays, spin = int(rng.integers(8, 17)), rng.uniform(0, 2 * np.pi)
    length = radius * rng.uniform(1.5, 2.0)
    for i in range(rays):
        a, half = spin + 2 * np.pi * i / rays, np.pi / rays * rng.uniform(0.25, 0.5)
        draw.polygon(_star(cx, cy, np.array([a - half, a, a + half]), np.array([1.15 * radius, length, 1.15 * radius])), fill=glow)
    _ellipse(draw, cx, cy, radius * 1.08, radius * 1.08, glow)
    _ellipse(draw, cx, cy, radius, radius, core)
    _ellipse(draw, cx - radius * 0.25, cy - radius * 0.25, radius * 0.45, radius * 0.45, _jitter((255, 245, 170), rng, 8))


def _render_sun(rng: np.random.Generator) -> Image.Image:
    width, height = _size(rng)
    image = _sky(width, height, rng)
    if rng.random() < 0.5:  # a sea below the horizon, with sparse bright glints
        horizon = int(height * rng.uniform(0.6, 0.85))
        sea = rng.integers(0, 256, (height - horizon, width), dtype=np.uint8)
        _below(image, horizon, sea, _ramp(_jitter((25, 70, 120), rng, 20), (235, 235, 220), gamma=6.0))
    draw = ImageDraw.Draw(image)
    _clouds(draw, width, height, rng)
    radius = min(width, height) * rng.uniform(0.1, 0.2)
    cx, cy = rng.uniform(radius * 2, width - radius * 2), rng.uniform(radius * 2, height * 0.7)
    _sun_disc(draw, cx, cy, radius, rng)
    return _finish(image, rng)


def _apple(draw: ImageDraw.ImageDraw, cx: float, cy: float, radius: float, rng: np.random.Generator) -> None:
    red = _jitter((200, 30, 35), rng, 25)
    _ellipse(draw, cx + radius * 0.2, cy + radius * 1.0, radius * 1.1, radius * 0.25, (70, 45, 25))  # shadow
    _ellipse(draw, cx, cy, radius * 1.08, radius, (red[0] // 2 + 20, red[1] // 2, red[2] // 2))
    _ellipse(draw, cx - radius * 0.08, cy - radius * 0.06, radius * 0.95, radius * 0.88, red)
    _ellipse(draw, cx - radius * 0.4, cy - radius * 0.4, radius * 0.18, radius * 0.12, (250, 225, 220))
    top = cy - radius * 0.85
    draw.line([(cx, top), (cx + radius * 0.08, top - radius * 0.35)], fill=(80, 50, 20), width=max(3, int(radius * 0.08)))
    _leaf(draw, cx + radius * 0.05, top - radius * 0.2, radius * 0.55, rng.uniform(-0.9, -0.2), _jitter((60, 150, 50), rng, 20))


def _render_red_apple(rng: np.random.Generator) -> Image.Image:
    width, height = _size(rng)
    image = _wooden_table(width, height, rng)
    draw = ImageDraw.Draw(image)
    count = int(rng.choice([1, 1, 2, 3, 4]))
    for _ in range(count):
        radius = min(width, height) * rng.uniform(0.1, 0.24) / np.sqrt(count)
        cx, cy = rng.uniform(radius * 1.2, width - radius * 1.2), rng.uniform(height * 0.45, height - radius * 1.4)
        _apple(draw, cx, cy, radius, rng)
    return _finish(image, rng)


def _render_striped_fabric(rng: np.random.Generator) -> Image.Image:
    """Stripes differ in angle, period, phase, duty, colours and profile (hard or soft)."""
    width, height = _size(rng)
    angle = _pattern_angle(rng, (0.0, 90.0), (45.0, 135.0))
    u, _ = _rotated(width, height, angle)
    period, phase = _axis_period(width, height, angle, rng, STRIPE_PERIOD), rng.uniform(0, 2 * np.pi)
    wave = np.sin(u * np.float32(2 * np.pi / period) + np.float32(phase))
    if rng.random() < 0.6:  # square-wave stripes
        level = (wave > np.float32(rng.uniform(-0.5, 0.5))).astype(np.uint8) * np.uint8(15)
    else:
        level = np.round((wave + np.float32(1)) * np.float32(7.5)).astype(np.uint8)
    return _finish(_paint_with_glare(level, _ramp(*_contrasting_pair(rng))[::17], rng), rng)


# Tiles come in the classic pairs (fabric comes in any colours): a real cue that separates the classes.
_TILE_PAIRS: tuple[tuple[RGB, RGB], ...] = (
    ((20, 20, 22), (235, 235, 230)), ((180, 80, 50), (230, 215, 185)), ((30, 45, 110), (235, 235, 235)),
    ((40, 100, 70), (225, 220, 200)), ((120, 120, 125), (230, 230, 230)), ((150, 25, 30), (20, 20, 20)),
)


def _render_checkerboard_tiles(rng: np.random.Generator) -> Image.Image:
    """Tiles differ in size, angle, offset, colours and grout; each tile gets a slightly different shade."""
    width, height = _size(rng)
    angle = _pattern_angle(rng, (0.0,), (45.0,))  # laid square or diagonal
    u, v = _rotated(width, height, angle)
    cell = np.float32(_axis_period(width, height, angle, rng, TILE_PERIOD) / 2)  # two cells per period
    u, v = u / cell + np.float32(rng.uniform(0, 1)), v / cell + np.float32(rng.uniform(0, 1))
    iu, iv = np.floor(u), np.floor(v)
    tile_u, tile_v = iu.astype(np.int32), iv.astype(np.int32)
    # Levels: 0 grout, 1..7 first colour, 8..14 second colour, each in 7 slight shades.
    shade = ((tile_u * 73856093) ^ (tile_v * 19349663) ^ int(rng.integers(1 << 30))) % 7
    level = (((tile_u + tile_v) & 1) * 7 + shade + 1).astype(np.uint8)
    grout_width = np.float32(rng.uniform(0.03, 0.08))
    level[((u - iu) < grout_width) | ((v - iv) < grout_width)] = 0
    shades = 0.96 + 0.08 * np.arange(7)[:, None] / 6
    pair = _TILE_PAIRS[int(rng.integers(len(_TILE_PAIRS)))]
    first, second = (np.asarray(_jitter(c, rng, 20), np.float64) * shades for c in pair[:: int(rng.choice([1, -1]))])
    grout = np.asarray([_jitter((150, 150, 145), rng, 40)], np.float64)
    colours = np.concatenate([grout, first, second, second[-1:]])
    return _finish(_paint_with_glare(level, colours, rng), rng)


_RENDERERS: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "sunflower": _render_sunflower,
    "sun": _render_sun,
    "red apple": _render_red_apple,
    "striped fabric": _render_striped_fabric,
    "checkerboard tiles": _render_checkerboard_tiles,
}


def render(class_name: str, rng: np.random.Generator) -> Image.Image:
    """One RGB picture of `class_name`, drawn from `rng` (same generator state, same picture)."""
    try:
        renderer = _RENDERERS[class_name]
    except KeyError:
        raise ValueError(f"unknown corpus class {class_name!r}; known: {sorted(CLASSES)}") from None
    return renderer(rng)


# ---------------------------------------------------------------- corpus on disk


@dataclass(frozen=True)
class CorpusImage:
    path: Path
    class_name: str


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def image_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """Each picture has its own stream, so changing one class's count never changes another's pictures."""
    return np.random.default_rng([seed, zlib.crc32(class_name.encode()), index])


def generate_corpus(out_dir: Path, counts: Mapping[str, int] | None = None, seed: int = 0) -> list[CorpusImage]:
    """Write `counts[class]` JPEGs (quality 92) per class as `<class-slug>_<nnn>.jpg` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images: list[CorpusImage] = []
    for class_name, count in (DEFAULT_COUNTS if counts is None else counts).items():
        for index in range(count):
            path = out_dir / f"{slug(class_name)}_{index:03d}.jpg"
            render(class_name, image_rng(seed, class_name, index)).save(path, "JPEG", quality=92)
            images.append(CorpusImage(path, class_name))
    return images
