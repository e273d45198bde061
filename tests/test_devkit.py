"""The synthetic corpus and the tiny CLIP that tests and the offline demo stand on.

The model tests train once (about 1.5 minutes on two cores) into the repository's ignored
`.cache/cvdb`, the folder tests/conftest.py uses too, and reuse it while neither devkit module
changes. Nothing here touches the network.
"""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pytest
from PIL import Image
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score
from transformers import CLIPModel, CLIPProcessor

from common.devkit import corpus, tiny_clip, tiny_multilingual

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "cvdb"  # shared with conftest: one training
HELD_OUT_SEED = 7  # not the training seeds: the quality bar is on pictures the model never saw
EPS, MIN_SAMPLES = 0.18, 3  # the product's DBSCAN defaults


# ---------------------------------------------------------------- helpers


def thumbnail_vector(image: Image.Image) -> np.ndarray:
    """Zero-mean, unit-norm 32x32 grey thumbnail: dot products are Pearson correlations."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BOX), np.float64).ravel()
    grey -= grey.mean()
    return grey / (np.linalg.norm(grey) or 1.0)


def brightness(pixels: np.ndarray) -> np.ndarray:
    rgb = pixels.astype(np.float64)
    return np.sqrt(0.241 * rgb[..., 0] ** 2 + 0.691 * rgb[..., 1] ** 2 + 0.068 * rgb[..., 2] ** 2) / 255


def sharpness(pixels: np.ndarray) -> float:
    """Laplacian variance of the grey picture scaled to a long side of 512."""
    height, width = pixels.shape[:2]
    scale = 512 / max(height, width)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(pixels, (round(width * scale), round(height * scale)), interpolation=interpolation)
    return float(cv2.Laplacian(cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def re_upload(image: Image.Image) -> Image.Image:
    """The copy the bar is set on: 0.7x, JPEG q60, 5 % cropped off the top and left."""
    small = image.resize((round(image.width * 0.7), round(image.height * 0.7)), Image.Resampling.BICUBIC)
    small = jpeg_round_trip(small, 60)
    return small.crop((round(small.width * 0.05), round(small.height * 0.05), small.width, small.height))


def load(model_dir: Path) -> tuple[CLIPModel, CLIPProcessor]:
    """The product's loading path."""
    return CLIPModel.from_pretrained(model_dir).eval(), CLIPProcessor.from_pretrained(model_dir)


def pairwise(matrix: np.ndarray, labels: np.ndarray, same: bool) -> np.ndarray:
    upper = np.triu_indices(len(labels), 1)
    mask = (labels[:, None] == labels[None, :])[upper]
    return matrix[upper][mask if same else ~mask]


# ---------------------------------------------------------------- corpus


def test_required_classes_and_captions() -> None:
    assert {corpus.TARGET, corpus.LOOKALIKE, corpus.DISTRACTOR, *corpus.PATTERNED} <= set(corpus.CLASSES)
    assert len(set(corpus.PATTERNED)) == 2
    for name, entry in corpus.CLASSES.items():
        assert entry.name == name
        assert f"a photo of {name}" in entry.captions_en  # the product's default prompt
        assert entry.captions_ko and all(re.search("[가-힣]", text) for text in entry.captions_ko)


def test_render_is_deterministic_and_rgb() -> None:
    first = corpus.render(corpus.TARGET, np.random.default_rng(5))
    again = corpus.render(corpus.TARGET, np.random.default_rng(5))
    other = corpus.render(corpus.TARGET, np.random.default_rng(6))
    assert first.mode == "RGB"
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()
    with pytest.raises(ValueError, match="unknown corpus class"):
        corpus.render("unicorn", np.random.default_rng(0))


def test_generate_corpus_writes_named_jpegs(tmp_path: Path) -> None:
    images = corpus.generate_corpus(tmp_path, seed=3)
    counts = {name: sum(1 for i in images if i.class_name == name) for name in corpus.CLASSES}
    assert 1.5 <= counts[corpus.DISTRACTOR] / counts[corpus.TARGET] <= 2.0  # "keep the largest" picks wrong
    assert len({i.path for i in images}) == len(images) == len(list(tmp_path.glob("*.jpg")))
    for item in images:
        assert re.fullmatch(rf"{corpus.slug(item.class_name)}_\d{{3}}\.jpg", item.path.name)
        with Image.open(item.path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
    again = corpus.generate_corpus(tmp_path / "again", {corpus.TARGET: 2}, seed=3)
    assert [i.path.read_bytes() for i in again] == [i.path.read_bytes() for i in images if i.class_name == corpus.TARGET][:2]


@pytest.mark.parametrize("class_name", list(corpus.CLASSES))
def test_every_picture_passes_the_quality_filters(class_name: str) -> None:
    for index in range(25):
        image = jpeg_round_trip(corpus.render(class_name, corpus.image_rng(11, class_name, index)), 92)
        pixels = np.asarray(image)
        light = brightness(pixels)
        assert min(image.size) >= 300 and max(image.size) / min(image.size) <= 2.0
        assert sharpness(pixels) >= 100
        assert np.percentile(light, 99) >= 0.32 and np.percentile(light, 5) <= 0.95
        assert image.entropy() >= 3.0


@pytest.mark.parametrize("class_name", list(corpus.CLASSES))
def test_distinct_pictures_are_not_near_copies(class_name: str) -> None:
    thumbs = np.stack([thumbnail_vector(corpus.render(class_name, corpus.image_rng(12, class_name, i))) for i in range(30)])
    correlations = pairwise(thumbs @ thumbs.T, np.zeros(len(thumbs)), same=True)
    assert np.mean(correlations < 0.9) >= 0.97
    assert np.max(correlations) < 0.99


def test_patterned_pictures_collide_under_phash_yet_differ() -> None:
    """The case the product's pixel confirmation exists for: same pHash, different pictures."""
    collisions = []
    for class_name in corpus.PATTERNED:
        images = [corpus.render(class_name, corpus.image_rng(13, class_name, i)) for i in range(30)]
        hashes = [imagehash.phash(image) for image in images]
        for a, b in itertools.combinations(range(len(images)), 2):
            if hashes[a] - hashes[b] <= 10:
                collisions.append(float(thumbnail_vector(images[a]) @ thumbnail_vector(images[b])))
    assert len(collisions) >= 3
    assert np.median(collisions) < 0.9


def test_rendering_is_fast() -> None:
    import time

    started = time.perf_counter()
    for index in range(20):
        for name in corpus.CLASSES:
            corpus.render(name, corpus.image_rng(14, name, index))
    per_image = (time.perf_counter() - started) / (20 * len(corpus.CLASSES))
    assert per_image < 0.03  # a few ms on an idle core; generous for a shared machine


# ---------------------------------------------------------------- tokenizer and cheap training


def test_tokenizer_is_byte_level_and_reads_korean(tmp_path: Path) -> None:
    tokenizer = tiny_clip.build_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    for text in ("a photo of sunflower", "해바라기 사진", "Ünïcödé & emoji 🌻"):
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert tokenizer.unk_token_id not in ids[1:-1]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text.lower()


def test_training_is_deterministic_and_saves_a_loadable_model(tmp_path: Path) -> None:
    first = tiny_clip.train_tiny_clip(tmp_path / "a", seed=1, steps=2, images_per_class=3)
    second = tiny_clip.train_tiny_clip(tmp_path / "b", seed=1, steps=2, images_per_class=3)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json"):
        assert (first / name).exists()
    model_a, processor = load(first)
    model_b, _ = load(second)
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert a.equal(b), name
    assert processor.image_processor.crop_size == {"height": tiny_clip.IMAGE_SIZE, "width": tiny_clip.IMAGE_SIZE}


# ---------------------------------------------------------------- the trained model's quality bar
# The bands hold for training seeds 0, 1 and 2 with room to spare (measured once): ARI 1.0 (>= 0.8);
# within-class median 0.93-0.94, between-class median -0.14 to -0.06; text finds 5/5 classes in both
# languages (Korean through the distilled student); re-uploads >= 0.965 (>= 0.95); the shifted model's own-class means 0.25-0.31 (0.22-0.38).


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return tiny_clip.ensure_tiny_clip(CACHE)


@pytest.fixture(scope="session")
def shifted_dir() -> Path:
    return tiny_clip.ensure_shifted_tiny_clip(CACHE)


@pytest.fixture(scope="session")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Image.Image], np.ndarray]:
    items = corpus.generate_corpus(tmp_path_factory.mktemp("held-out"), seed=HELD_OUT_SEED)
    names = list(corpus.CLASSES)
    images = [Image.open(item.path).convert("RGB") for item in items]
    return images, np.array([names.index(item.class_name) for item in items])


@pytest.fixture(scope="session")
def embeddings(model_dir: Path, held_out: tuple[list[Image.Image], np.ndarray]) -> np.ndarray:
    model, processor = load(model_dir)
    return tiny_clip.embed_images(model, processor, held_out[0])


def test_cache_is_reused(model_dir: Path) -> None:
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert tiny_clip.ensure_tiny_clip(CACHE) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_embeddings_cluster_by_class(embeddings: np.ndarray, held_out: tuple[list[Image.Image], np.ndarray]) -> None:
    labels = held_out[1]
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    clusters = DBSCAN(eps=EPS, min_samples=MIN_SAMPLES, metric="cosine").fit_predict(embeddings)
    assert adjusted_rand_score(labels, clusters) >= 0.8
    names = list(corpus.CLASSES)

    def main_cluster(name: str) -> int:
        found, counts = np.unique(clusters[labels == names.index(name)], return_counts=True)
        return int(found[np.argmax(counts)])

    target, lookalike = main_cluster(corpus.TARGET), main_cluster(corpus.LOOKALIKE)
    assert target != -1 and lookalike != -1 and target != lookalike


def test_within_class_pictures_are_closer_than_other_classes(embeddings: np.ndarray, held_out: tuple[list[Image.Image], np.ndarray]) -> None:
    similarity = embeddings @ embeddings.T
    within, between = pairwise(similarity, held_out[1], True), pairwise(similarity, held_out[1], False)
    assert np.median(within) > 0.85 and np.median(between) < 0.3
    assert np.median(within) < 0.98  # distinct pictures of a class are not copies of each other


@pytest.mark.parametrize("language", ["en", "ko"])
def test_text_finds_its_class(model_dir: Path, embeddings: np.ndarray, held_out: tuple[list[Image.Image], np.ndarray], language: str) -> None:
    """English through the tiny CLIP's own text tower; Korean (alone and in the prompt) through the
    multilingual student distilled into the same space."""
    model, processor = load(model_dir)
    labels = held_out[1]
    for index, (name, entry) in enumerate(corpus.CLASSES.items()):
        if language == "en":
            vectors = tiny_clip.embed_texts(model, processor, [f"a photo of {name}"])
        else:
            texts = [entry.captions_ko[0], f"a photo of {entry.captions_ko[1]}"]
            vectors = tiny_multilingual.embed(model_dir / tiny_clip.MULTILINGUAL, texts)
        for vector in vectors:
            means = [float((embeddings[labels == k] @ vector).mean()) for k in range(len(corpus.CLASSES))]
            assert int(np.argmax(means)) == index, (name, means)


def test_copies_map_close(model_dir: Path, embeddings: np.ndarray, held_out: tuple[list[Image.Image], np.ndarray]) -> None:
    model, processor = load(model_dir)
    copies = tiny_clip.embed_images(model, processor, [re_upload(image) for image in held_out[0]])
    cosines = np.sum(copies * embeddings, axis=1)
    assert cosines.min() >= 0.95, np.sort(cosines)[:5]


def test_shifted_model_has_the_modality_gap(shifted_dir: Path, embeddings: np.ndarray, held_out: tuple[list[Image.Image], np.ndarray]) -> None:
    model, processor = load(shifted_dir)
    labels = held_out[1]
    assert np.allclose(tiny_clip.embed_images(model, processor, held_out[0]), embeddings, atol=1e-6)
    for index, (name, entry) in enumerate(corpus.CLASSES.items()):
        for text in (f"a photo of {name}", entry.captions_en[-1]):  # its text tower knows English only
            vector = tiny_clip.embed_texts(model, processor, [text])[0]
            means = np.array([float((embeddings[labels == k] @ vector).mean()) for k in range(len(corpus.CLASSES))])
            assert 0.22 <= means[index] <= 0.38, (text, means)
            assert means[index] > np.delete(means, index).max(), (text, means)
