"""The CLIP embedder through the real from_pretrained path, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sentence_transformers import SentenceTransformer

from common.devkit import corpus
from common.devkit.tiny_multilingual import student_encoder
from common.pipeline.embed import ClipEmbedder, ModelLoadError, pick_device


@pytest.fixture(scope="module")
def embedder(tiny_clip: Path) -> ClipEmbedder:
    return ClipEmbedder(str(tiny_clip), device="auto")


def test_image_vectors_are_unit_length_and_batch_independent(embedder: ClipEmbedder) -> None:
    rng = np.random.default_rng(0)
    images = [corpus.render(corpus.TARGET, rng) for _ in range(5)]
    together = embedder.embed_images(images, batch_size=5)
    one_by_one = embedder.embed_images(images, batch_size=1)
    assert together.shape == (5, embedder.dim) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)
    assert np.allclose(together, one_by_one, atol=1e-4)


def test_text_vectors_match_their_pictures(embedder: ClipEmbedder) -> None:
    rng = np.random.default_rng(1)
    target = embedder.embed_images([corpus.render(corpus.TARGET, rng) for _ in range(4)]).mean(axis=0)
    other = embedder.embed_images([corpus.render(corpus.DISTRACTOR, rng) for _ in range(4)]).mean(axis=0)
    text = embedder.embed_texts([f"a photo of {corpus.TARGET}"])[0]
    assert np.isclose(np.linalg.norm(text), 1, atol=1e-5)
    assert text @ target > text @ other


def test_describe_names_model_device_and_scale(embedder: ClipEmbedder, tiny_clip: Path) -> None:
    """`auto` is CUDA (in fp16) where torch sees a GPU, else the CPU (in bf16 where it has native bf16,
    else fp32): right on any machine."""
    from common.pipeline.embed import native_bfloat16

    on_cpu = ("cpu", "bfloat16" if native_bfloat16() else "float32")
    info = embedder.describe()
    assert info["model"] == str(tiny_clip)
    assert (info["device"], info["dtype"]) == (("cuda", "float16") if torch.cuda.is_available() else on_cpu)
    assert info["logit_scale"] == pytest.approx(embedder.logit_scale, rel=1e-3) and embedder.logit_scale > 1


@pytest.mark.parametrize(("cuda", "expected"), [(True, "cuda"), (False, "cpu")])
def test_auto_means_cuda_when_torch_sees_one_else_the_cpu(cuda: bool, expected: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert pick_device("auto") == torch.device(expected)
    assert pick_device("cpu") == torch.device("cpu")  # a named device is taken as given
    assert pick_device("cuda:1") == torch.device("cuda:1")


def test_a_model_that_cannot_load_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="save_pretrained"):
        ClipEmbedder(str(tmp_path / "missing"))


def _sentence_encoder(directory: Path, dim: int) -> Path:
    """A small sentence-transformers text encoder saved to disk, as a user would download one."""
    student_encoder(directory / "build", dim).save(str(directory / "st"))
    return directory / "st"


def test_a_separate_text_encoder_embeds_the_query(tiny_clip: Path, embedder: ClipEmbedder, tmp_path: Path) -> None:
    encoder = _sentence_encoder(tmp_path, embedder.dim)
    vectors = embedder.embed_texts(["해바라기 사진", "a photo of sunflower"], str(encoder))
    expected = SentenceTransformer(str(encoder), device="cpu").encode(["해바라기 사진", "a photo of sunflower"])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(vectors, expected, atol=1e-5)
    assert not np.allclose(vectors[1], embedder.embed_texts(["a photo of sunflower"])[0], atol=1e-2)
    assert embedder.text_encoder(str(encoder)) is embedder.text_encoder(str(encoder))  # loaded once, kept


def test_a_text_encoder_of_the_wrong_width_is_refused(tiny_clip: Path, embedder: ClipEmbedder, tmp_path: Path) -> None:
    encoder = _sentence_encoder(tmp_path, embedder.dim + 3)
    with pytest.raises(ModelLoadError, match="dimensional vectors"):
        embedder.embed_texts(["고양이"], str(encoder))


def test_a_missing_text_encoder_says_what_to_do(embedder: ClipEmbedder, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="could not load the text encoder .*--text-model none"):
        embedder.embed_texts(["고양이"], str(tmp_path / "missing"))


@pytest.mark.parametrize(("query", "settings", "expected"), [
    ("red panda", {}, None),  # English: CLIP's own text tower
    ("고양이", {}, "sentence-transformers/clip-ViT-B-32-multilingual-v1"),  # known for ViT-B/32
    ("café au lait", {}, "sentence-transformers/clip-ViT-B-32-multilingual-v1"),  # not ASCII: multilingual
    ("고양이", {"text_model": "none"}, None),
    ("red panda", {"text_model": "my/encoder"}, "my/encoder"),  # an explicit encoder scores every query
    ("고양이", {"model": "/models/clip", "multilingual_text_model": "/models/student"}, "/models/student"),
])
def test_the_query_encoder_follows_the_query_and_the_settings(query: str, settings: dict[str, str],
                                                               expected: str | None) -> None:
    from common.config import Settings
    from common.pipeline.text_encoder import query_encoder

    assert query_encoder(query, Settings(**settings)) == expected


def test_a_non_english_query_with_no_known_encoder_says_what_to_do() -> None:
    from common.config import Settings
    from common.pipeline.text_encoder import query_encoder

    with pytest.raises(ModelLoadError, match="CVDB_MULTILINGUAL_TEXT_MODEL .*--text-model none"):
        query_encoder("고양이", Settings(model="someone/clip-vit-large"))


SIZES = [(64, 64), (65, 64), (64, 65), (37, 100), (100, 37), (511, 383), (383, 512), (1000, 224), (99, 98)]


@pytest.mark.parametrize("processor_of", ["tiny", "vit-b-32"])
def test_clip_input_is_the_image_processors_output(embedder: ClipEmbedder, processor_of: str) -> None:
    """ClipInput crops with Pillow and numpy, and model_input rescales and normalises the crops in
    torch; together they must equal the processor's output, for the tiny model (64 px) and for
    ViT-B/32's defaults (224 px), at every aspect and parity."""
    from transformers import CLIPImageProcessor

    from common.pipeline.clip_input import ClipInput
    from common.pipeline.embed import model_input

    processor = embedder.processor.image_processor if processor_of == "tiny" else CLIPImageProcessor()
    clip_input, rng = ClipInput.of(processor), np.random.default_rng(5)
    for width, height in SIZES:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        expected = processor(images=image, return_tensors="np")["pixel_values"][0]
        crop = clip_input.crop(image)
        assert crop.dtype == np.uint8 and crop.shape == expected.shape
        ours = model_input(crop[None], clip_input, torch.device("cpu"), torch.float32)[0].numpy()
        assert np.abs(ours - expected).max() < 1e-5, (width, height)


def test_embeddings_from_clip_input_equal_the_processors(embedder: ClipEmbedder) -> None:
    images = [corpus.render(name, corpus.image_rng(3, name, 0)) for name in corpus.CLASSES]
    ours = embedder.embed_crops(np.stack([embedder.clip_input.crop(im) for im in images]))
    theirs = embedder.embed_prepared(embedder.processor(images=images, return_tensors="np")["pixel_values"])
    assert np.abs(ours - theirs).max() < 1e-5


def test_clip_input_is_read_from_the_saved_json_without_transformers(embedder: ClipEmbedder, tiny_clip: Path,
                                                                      tmp_path: Path) -> None:
    """`cvdb build` starts downloading before torch and transformers are imported: the numbers come
    from the model's JSON, in transformers 5's layout (processor_config.json) or the hub's older one."""
    from transformers import CLIPImageProcessor

    from common.pipeline.clip_input import ClipInput, read_clip_input

    assert read_clip_input(str(tiny_clip)) == ClipInput.of(embedder.processor.image_processor)
    old_layout = {"crop_size": 224, "size": 224, "do_center_crop": True, "resample": 3,
                  "image_mean": list(CLIPImageProcessor().image_mean), "image_std": list(CLIPImageProcessor().image_std)}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(old_layout))
    assert read_clip_input(str(tmp_path)) == ClipInput.of(CLIPImageProcessor())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="has none of preprocessor_config.json, processor_config.json"):
        read_clip_input(str(empty))


class _Loading:
    """An embedder whose model is still loading until `loaded` is set; counts its batches."""

    def __init__(self) -> None:
        self.loaded, self.batches, self.shared = False, [], []

    def ready(self) -> bool:
        return self.loaded

    def embed_crops(self, pixels: np.ndarray, share_cpu: bool = False) -> np.ndarray:
        self.batches.append(len(pixels))
        self.shared.append(share_cpu)
        return np.ones((len(pixels), 4), np.float32)


def test_checked_images_wait_in_a_bounded_backlog_while_the_model_loads() -> None:
    from common.pipeline.accept import StagedImage
    from common.pipeline.collect import Collected, _Embedder
    from common.pipeline.progress import SilentProgress

    model, result = _Loading(), Collected()
    batcher = _Embedder(model, 4, result, SilentProgress(), backlog=3)  # type: ignore[arg-type]

    def staged(i: int) -> StagedImage:
        return StagedImage(f"u{i}", f"{i:064x}", Path("x"), 1, 1, "jpeg", {}, None, np.zeros(3))  # type: ignore[arg-type]

    for i in range(11):
        batcher.add(staged(i))
    assert model.batches == []  # the caller went on downloading and checking instead of waiting
    batcher.add(staged(11))  # 3 batches waiting: the backlog's bound, so this one waits for the model
    assert model.batches == [4, 4, 4]
    model.loaded = True
    for i in range(12, 17):
        batcher.add(staged(i))
    batcher.flush()
    assert model.batches == [4, 4, 4, 4, 1]
    assert [s.url for s in result.staged] == [f"u{i}" for i in range(17)]
    assert all(s.clip_crop is None for s in result.staged)


def test_embedding_takes_every_core_only_while_it_holds_the_pass_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread while the decode workers fill batches slower than a batch embeds (they are busy);
    every core while batches fill faster (they wait on it), for the first batch, and at the end."""
    from common.pipeline import collect
    from common.pipeline.accept import StagedImage
    from common.pipeline.progress import SilentProgress

    clock = [0.0]
    monkeypatch.setattr(collect.time, "perf_counter", lambda: clock[0])
    model = _Loading()
    model.loaded = True

    def timed(pixels: np.ndarray, share_cpu: bool = False) -> np.ndarray:
        clock[0] += 0.1  # every batch takes 0.1 s to embed
        return _Loading.embed_crops(model, pixels, share_cpu)

    model.embed_crops = timed  # type: ignore[method-assign]
    batcher = collect._Embedder(model, 2, collect.Collected(), SilentProgress())  # type: ignore[arg-type]

    def arrive(count: int, every_s: float) -> None:
        for i in range(count):
            clock[0] += every_s
            batcher.add(StagedImage(f"u{i}", f"{i:064x}", Path("x"), 1, 1, "jpeg", {}, None, np.zeros(3)))  # type: ignore[arg-type]

    arrive(2, 0.0)  # the first batch: nothing known yet
    arrive(4, 0.2)  # a batch fills in 0.4 s: the decode workers are the busy ones
    arrive(4, 0.01)  # a batch fills in 0.02 s: they wait on embedding
    arrive(1, 0.01)
    batcher.flush(last=True)  # the downloads are over
    assert model.shared == [False, True, True, False, False, False]


def test_a_shared_cpu_embeds_on_one_thread_and_gives_the_cores_back(embedder: ClipEmbedder) -> None:
    crops = np.stack([embedder.clip_input.crop(corpus.render(name, corpus.image_rng(4, name, 0)))
                      for name in corpus.CLASSES])
    threads = torch.get_num_threads()
    alone = embedder.embed_crops(crops)
    shared = embedder.embed_crops(crops, share_cpu=True)
    assert torch.get_num_threads() == 1
    assert np.abs(embedder.embed_crops(crops) - alone).max() < 1e-4
    assert torch.get_num_threads() == threads
    assert np.abs(shared - alone).max() < 1e-4


def test_bfloat16_embeddings_point_where_float32_ones_do(tiny_clip: Path) -> None:
    """bfloat16, the default on a CPU with native bfloat16, keeps float32's directions."""
    pictures = [corpus.render(name, corpus.image_rng(6, name, 0)) for name in corpus.CLASSES]
    full = ClipEmbedder(str(tiny_clip), device="cpu", dtype="float32")
    half = ClipEmbedder(str(tiny_clip), device="cpu", dtype="bfloat16")
    assert half.describe()["dtype"] == "bfloat16" and full.describe()["dtype"] == "float32"
    cosines = (full.embed_images(pictures) * half.embed_images(pictures)).sum(axis=1)
    assert cosines.min() > 0.999
    assert (full.embed_texts(["a photo of a sunflower"]) * half.embed_texts(["a photo of a sunflower"])).sum() > 0.999


def test_auto_number_format_is_bfloat16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.pipeline import embed

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(embed, "native_bfloat16", lambda: True)
    assert embed.pick_dtype(cpu, "auto") == torch.bfloat16
    assert embed.pick_dtype(cuda, "auto") == torch.float16
    assert embed.pick_dtype(cpu, "float32") == torch.float32
    monkeypatch.setattr(embed, "native_bfloat16", lambda: False)
    assert embed.pick_dtype(cpu, "auto") == torch.float32
    assert embed.pick_dtype(cpu, "bfloat16") == torch.bfloat16
