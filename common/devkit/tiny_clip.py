"""A tiny CLIP trained in about a minute on the synthetic corpus, loadable with `from_pretrained`.

Tests and the offline demo cannot reach the Hugging Face hub, yet must exercise the product's real
path (`CLIPModel.from_pretrained` + `CLIPProcessor.from_pretrained` on a folder). This module builds
that folder: a byte-level BPE tokenizer (so Korean works), a CLIP with tiny towers trained on corpus
pictures against their English and Korean captions, and a variant with real CLIP's modality gap.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
)

from common.devkit import corpus

IMAGE_SIZE = 64
PROJECTION_DIM = 64
VISION_WIDTH, VISION_LAYERS, PATCH_SIZE = 64, 3, 8
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
# Training pictures come from their own seed range, so no default `generate_corpus` seed reuses them.
_TRAIN_SEED_BASE = 1_000_000
_CALIBRATION_SEED_BASE = 2_000_000
REPORT_FILE = "devkit_report.json"
# Views keep 88-100 % of each side: re-uploads crop lightly, and larger crops taught the model
# invariance it could not also afford for small ones.
_MIN_CROP_KEEP = 0.88


# ---------------------------------------------------------------- tokenizer and processor


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def build_tokenizer(directory: Path) -> CLIPTokenizer:
    """A byte-level BPE with no merges: every UTF-8 byte is a token, so any text (Korean too) encodes."""
    alphabet = _byte_alphabet()
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab |= {char + "</w>": 256 + i for i, char in enumerate(alphabet)}
    vocab |= {_BOS: 512, _EOS: 513}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_image_processor() -> CLIPImageProcessorPil:
    """CLIP's own preprocessing (shortest edge, centre crop, CLIP mean/std) at the tiny model's size."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )


@dataclass(frozen=True)
class ClipSpec:
    """The sizes that decide a CLIP's shape and cost (the benchmark times ViT-B/32's with it)."""

    vision_hidden: int = VISION_WIDTH
    vision_layers: int = VISION_LAYERS
    vision_heads: int = 4
    patch: int = PATCH_SIZE
    image_size: int = IMAGE_SIZE
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_vocab: int = 0  # 0: exactly the tokenizer's vocabulary
    projection: int = PROJECTION_DIM


TINY = ClipSpec()


def clip_config(spec: ClipSpec, tokenizer: CLIPTokenizer) -> CLIPConfig:
    text = CLIPTextConfig(
        vocab_size=max(spec.text_vocab, len(tokenizer)), hidden_size=spec.text_hidden,
        intermediate_size=4 * spec.text_hidden, num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads, max_position_embeddings=77, projection_dim=spec.projection,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden, intermediate_size=4 * spec.vision_hidden, num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads, image_size=spec.image_size, patch_size=spec.patch,
        projection_dim=spec.projection,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=spec.projection)


# ---------------------------------------------------------------- embeddings (shared with tests)


def _pooled(output: Any) -> torch.Tensor:
    """transformers 5 returns an output object whose pooler_output holds the projection; 4 a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def image_features(model: CLIPModel, pixel_values: torch.Tensor) -> torch.Tensor:
    return _pooled(model.get_image_features(pixel_values=pixel_values))


def text_features(model: CLIPModel, processor: CLIPProcessor, texts: Sequence[str]) -> torch.Tensor:
    """Projected, unnormalised text features (the shift works on these)."""
    tokens = processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
    return _pooled(model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))


@torch.inference_mode()
def embed_images(model: CLIPModel, processor: CLIPProcessor, images: Sequence[Image.Image]) -> np.ndarray:
    """L2-normalised image embeddings, as the product computes them."""
    pixels = torch.from_numpy(processor(images=list(images), return_tensors="np")["pixel_values"])
    return F.normalize(image_features(model, pixels), dim=-1).numpy()


@torch.inference_mode()
def embed_texts(model: CLIPModel, processor: CLIPProcessor, texts: Sequence[str]) -> np.ndarray:
    return F.normalize(text_features(model, processor, texts), dim=-1).numpy()


# ---------------------------------------------------------------- training data


@dataclass(frozen=True)
class TrainSettings:
    """Every training knob; the defaults train in about 1.5 minutes on two idle cores."""

    steps: int = 500
    images_per_class: int = 128
    pattern_factor: int = 2  # patterned classes get this many times the pictures: they vary the most
    views_per_image: int = 3  # the clean picture and two re-uploads of it
    batch_images: int = 48  # per step, each as two views
    captions_per_step: int = 16  # of ~50; the text tower would otherwise cost as much as the image tower
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    ema_decay: float = 0.98
    class_weight: float = 1.0
    class_temperature: float = 0.1
    instance_weight: float = 0.25
    instance_temperature: float = 0.1
    copy_weight: float = 3.0
    foreign_texts_per_step: int = 8  # random Hangul, alone and in the prompt: see no_preference_loss
    foreign_weight: float = 1.0


def _augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A plausible re-upload of the same picture: cropped, shrunk, re-encoded, maybe mirrored."""
    width, height = image.size
    keep_w, keep_h = rng.uniform(_MIN_CROP_KEEP, 1.0), rng.uniform(_MIN_CROP_KEEP, 1.0)
    left, top = rng.uniform(0, 1 - keep_w) * width, rng.uniform(0, 1 - keep_h) * height
    image = image.crop((round(left), round(top), round(left + keep_w * width), round(top + keep_h * height)))
    scale = rng.uniform(96, 320) / min(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR)
    if rng.random() < 0.7:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(40, 96)))
        image = Image.open(buffer).convert("RGB")
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def _colour_jitter(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small brightness/contrast changes per view, on CLIP-normalised (n, 3, h, w) pixels."""
    n = pixels.shape[0]
    gain = rng.uniform(0.9, 1.1, (n, 1, 1, 1)).astype(np.float32)
    shift = rng.uniform(-0.15, 0.15, (n, 1, 1, 1)).astype(np.float32)
    return pixels * gain + shift


@dataclass(frozen=True)
class TrainingData:
    views: torch.Tensor  # (images, views, 3, H, W): view 0 is the clean picture
    labels: torch.Tensor  # (images,) class index
    captions: list[str]
    caption_labels: torch.Tensor  # (captions,) class index


def _training_data(settings: TrainSettings, processor: CLIPProcessor, seed: int) -> TrainingData:
    rng = np.random.default_rng(seed)
    names = list(corpus.CLASSES)
    views: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        for index in range(settings.images_per_class * (settings.pattern_factor if name in corpus.PATTERNED else 1)):
            picture = corpus.render(name, corpus.image_rng(_TRAIN_SEED_BASE + seed, name, index))
            copies = [picture] + [_augment(picture, rng) for _ in range(settings.views_per_image - 1)]
            views.append(processor(images=copies, return_tensors="np")["pixel_values"])
            labels.append(label)
    captions = [(label, text) for label, name in enumerate(names) for text in _captions(name)]
    return TrainingData(
        views=torch.from_numpy(np.stack(views)),
        labels=torch.tensor(labels),
        captions=[text for _, text in captions],
        caption_labels=torch.tensor([label for label, _ in captions]),
    )


def _captions(name: str) -> tuple[str, ...]:
    """English only, as real CLIP learned: other languages come through the distilled student
    (tiny_multilingual), as they do through clip-ViT-B-32-multilingual-v1."""
    return corpus.CLASSES[name].captions_en


# ---------------------------------------------------------------- losses


def _multi_positive_nll(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over every right answer of a row (SupCon's L_out form).

    Averaging, not log-sum-exp over the positives, is what makes *all* pictures of a class close:
    with log-sum-exp the loss is content once the nearest few are.
    """
    rows = positive.any(dim=1)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    mean_positive = log_prob.masked_fill(~positive, 0.0).sum(dim=1) / positive.sum(dim=1).clamp(min=1)
    return -mean_positive[rows].mean()


def clip_loss(images: torch.Tensor, texts: torch.Tensor, image_labels: torch.Tensor, text_labels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric image<->text loss, where every caption of a picture's class is a right answer."""
    logits = scale * images @ texts.T
    positive = image_labels[:, None] == text_labels[None, :]
    return 0.5 * (_multi_positive_nll(logits, positive) + _multi_positive_nll(logits.T, positive.T))


def class_loss(images: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss: every other picture of the class is a right answer.

    Why: the text loss alone is satisfied long before a class is compact, and DBSCAN needs
    pictures of one class to chain within eps = 0.18 (cosine >= 0.82) of each other.
    """
    logits = (images @ images.T / temperature).fill_diagonal_(-torch.inf)
    positive = (labels[:, None] == labels[None, :]).fill_diagonal_(False)
    return _multi_positive_nll(logits, positive)


def instance_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Two views of one picture must find each other among all pictures (SimCLR).

    Why: it makes re-uploads of one picture map close, and it keeps distinct pictures of one class
    apart, so near-duplicate detection on embeddings still has room between copies and siblings.
    """
    logits = first @ second.T / temperature
    target = torch.arange(first.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def copy_loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """1 - cosine between two re-uploads of each picture: pulls copies together without pushing
    anything apart (the instance loss alone leaves copies of periodic patterns at ~0.9)."""
    return (1 - (first * second).sum(dim=1)).mean()


def no_preference_loss(texts: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The variance, over the classes, of a text's cosine with each class's mean picture.

    Why: real CLIP's text tower learned from English captions, so a prompt in a language it never
    learned (Korean) lands near nothing in particular. A tiny model left alone maps such bytes to
    some class by chance; trained on random Hangul toward no preference, it behaves like the real
    one, and the corpus's Korean captions (never seen) then say nothing to its text tower.
    """
    means = F.normalize(torch.stack([images[labels == k].mean(0) for k in labels.unique()]), dim=-1)
    return (texts @ means.T).var(dim=1).mean()


def foreign_texts(rng: np.random.Generator, count: int) -> list[str]:
    """Random Hangul words (never the corpus's Korean captions), alone and in the pipeline's prompt."""
    words = ["".join(chr(0xAC00 + int(rng.integers(11172))) for _ in range(int(rng.integers(1, 5)))) for _ in range(count)]
    return [word if i % 2 else f"a photo of {word}" for i, word in enumerate(words)]


# ---------------------------------------------------------------- training loop


@contextmanager
def training_threads() -> Iterator[None]:
    """Torch on at most two threads while training, whatever the machine: the same results everywhere."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def _batch(data: TrainingData, batch_images: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two different views of `batch_images` random pictures, colour-jittered."""
    picks = rng.choice(len(data.labels), size=min(batch_images, len(data.labels)), replace=False)
    views = np.array([rng.choice(data.views.shape[1], size=2, replace=False) for _ in picks])
    first = _colour_jitter(data.views[picks, views[:, 0]].numpy(), rng)
    second = _colour_jitter(data.views[picks, views[:, 1]].numpy(), rng)
    return torch.from_numpy(first), torch.from_numpy(second), data.labels[picks]


def _losses(model: CLIPModel, processor: CLIPProcessor, tokens: dict[str, torch.Tensor], data: TrainingData,
            settings: TrainSettings, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    first, second, labels = _batch(data, settings.batch_images, rng)
    images = F.normalize(image_features(model, torch.cat([first, second])), dim=-1)
    picked = torch.from_numpy(rng.choice(len(data.captions), size=min(settings.captions_per_step, len(data.captions)), replace=False))
    texts = F.normalize(_pooled(model.get_text_features(**{k: v[picked] for k, v in tokens.items()})), dim=-1)
    foreign = F.normalize(text_features(model, processor, foreign_texts(rng, settings.foreign_texts_per_step)), dim=-1)
    both, half = torch.cat([labels, labels]), len(labels)
    return {
        "clip": clip_loss(images, texts, both, data.caption_labels[picked], model.logit_scale.exp()),
        "class": class_loss(images, both, settings.class_temperature),
        "instance": instance_loss(images[:half], images[half:], settings.instance_temperature),
        "copy": copy_loss(images[:half], images[half:]),
        "foreign": no_preference_loss(foreign, images, both),
    }


def _train_step(model: CLIPModel, processor: CLIPProcessor, tokens: dict[str, torch.Tensor], data: TrainingData,
                settings: TrainSettings, rng: np.random.Generator) -> dict[str, float]:
    losses = _losses(model, processor, tokens, data, settings, rng)
    weights = {"clip": 1.0, "class": settings.class_weight, "instance": settings.instance_weight, "copy": settings.copy_weight,
               "foreign": settings.foreign_weight}
    total = torch.stack([weights[name] * loss for name, loss in losses.items()]).sum()
    total.backward()
    return {"loss": total.item()} | {name: loss.item() for name, loss in losses.items()}


def _parameter_groups(model: CLIPModel, weight_decay: float) -> list[dict[str, Any]]:
    """Decay only weight matrices: decaying the temperature, biases or norms just fights the loss."""
    matrices = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    others = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    return [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]


def _fit(model: CLIPModel, processor: CLIPProcessor, data: TrainingData, settings: TrainSettings, seed: int) -> list[dict[str, float]]:
    """AdamW with warm-up and cosine decay; the model ends holding the moving average of its weights."""
    rng = np.random.default_rng(seed + 1)
    tokens = dict(processor(text=data.captions, return_tensors="pt", padding=True))
    optimiser = torch.optim.AdamW(_parameter_groups(model, settings.weight_decay), lr=settings.learning_rate)
    history = []
    average = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    for step in range(settings.steps):
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(step, settings)
        optimiser.zero_grad(set_to_none=True)
        history.append(_train_step(model, processor, {k: tokens[k] for k in ("input_ids", "attention_mask")}, data,
                                   settings, rng))
        optimiser.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP clips its temperature at 100
            _update_average(model, average, min(settings.ema_decay, (1 + step) / (10 + step)))
    _load_average(model, average)
    model.eval()
    return history


def _update_average(model: CLIPModel, average: dict[str, torch.Tensor], decay: float) -> None:
    """Exponential moving average of the weights: smoother, and more robust to small input changes."""
    for name, p in model.named_parameters():
        average[name].lerp_(p.detach(), 1 - decay)


@torch.no_grad()
def _load_average(model: CLIPModel, average: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        p.copy_(average[name])


def train_tiny_clip(out_dir: Path, *, seed: int = 0, steps: int = TrainSettings.steps, images_per_class: int = TrainSettings.images_per_class) -> Path:
    """Train a tiny CLIP on freshly rendered corpus pictures and save it, with its processor, to `out_dir`."""
    return train_with(out_dir, TrainSettings(steps=steps, images_per_class=images_per_class), seed)


def train_with(out_dir: Path, settings: TrainSettings, seed: int = 0) -> Path:
    """`train_tiny_clip` with every training knob exposed."""
    started, cpu_started = time.perf_counter(), time.process_time()
    out_dir.mkdir(parents=True, exist_ok=True)
    with training_threads():
        torch.manual_seed(seed)
        processor = CLIPProcessor(image_processor=build_image_processor(), tokenizer=build_tokenizer(out_dir))
        data = _training_data(settings, processor, seed)
        prepared = time.perf_counter() - started
        model = CLIPModel(clip_config(TINY, processor.tokenizer))
        history = _fit(model, processor, data, settings, seed)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    report = {
        "seed": seed,
        "settings": asdict(settings),
        "data_seconds": round(prepared, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(time.process_time() - cpu_started, 2),  # wall time on a busy machine says little
        "logit_scale": round(model.logit_scale.exp().item(), 3),
        "final_loss": {k: round(float(np.mean([h[k] for h in history[-20:]])), 4) for k in history[-1]},
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return out_dir


# ---------------------------------------------------------------- the modality gap


@dataclass(frozen=True)
class Calibration:
    class_means: torch.Tensor  # (classes, dim): mean unit image embedding of each class
    texts: torch.Tensor  # (captions, dim): unnormalised projected text features
    text_labels: torch.Tensor  # (captions,) class index


def _calibration(model: CLIPModel, processor: CLIPProcessor, images_per_class: int = 12) -> Calibration:
    """Image class means and caption features on pictures the model never trained on."""
    names = list(corpus.CLASSES)
    means, texts, labels = [], [], []
    with torch.no_grad():  # not inference_mode: the shift is fitted with autograd on these tensors
        for label, name in enumerate(names):
            pictures = [corpus.render(name, corpus.image_rng(_CALIBRATION_SEED_BASE, name, i)) for i in range(images_per_class)]
            means.append(torch.from_numpy(embed_images(model, processor, pictures)).mean(dim=0))
            texts.append(text_features(model, processor, _captions(name)))
            labels += [label] * len(_captions(name))
    return Calibration(torch.stack(means), torch.cat(texts), torch.tensor(labels))


def _shifted_cosines(shift: torch.Tensor, calibration: Calibration) -> torch.Tensor:
    """(captions, classes) mean cosine of each shifted caption with each class's pictures."""
    return F.normalize(calibration.texts + shift, dim=-1) @ calibration.class_means.T


def _fit_shift(calibration: Calibration, match: float, gap: float) -> torch.Tensor:
    """The one vector v whose addition to every text feature puts cosines at `match` / `match - gap`."""
    matching = calibration.text_labels[:, None] == torch.arange(len(calibration.class_means))[None, :]
    # Start from a large step along the mean picture direction; the optimiser does the rest.
    start = F.normalize(calibration.class_means.mean(dim=0), dim=0) * calibration.texts.norm(dim=1).mean() * 3
    shift = start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([shift], lr=0.05 * float(start.norm()))
    for _ in range(600):
        optimiser.zero_grad()
        error = _shifted_cosines(shift, calibration) - torch.where(matching, match, match - gap)
        # Matching and non-matching pairs weigh the same, though there are four times more of the latter.
        loss = (error[matching] ** 2).mean() + (error[~matching] ** 2).mean()
        loss.backward()
        optimiser.step()
    return shift.detach()


def shift_text_embeddings(src: Path, dst: Path, *, target_match_cosine: float = 0.3, logit_scale: float | None = 100.0) -> Path:
    """Copy the model at `src` to `dst` with every text embedding moved by one constant vector.

    Real CLIP's text and image embeddings sit in separate cones (the modality gap): a matching
    text-image pair scores ~0.3 and a non-matching one ~0.2. A model trained briefly has no gap, so
    thresholds tuned on it would not transfer. The text projection has no bias, so the shift v goes
    into the final layer norm's bias as c with text_projection.weight @ c = v; images are untouched.

    The shift shrinks text-image cosine gaps nearly tenfold, so the trained temperature (~14) would
    no longer separate classes; `logit_scale` (real CLIP's 100 by default, None keeps the trained one)
    restores a realistic temperature for the product's `log(size) + logit_scale * similarity` rule.
    """
    with training_threads():
        model = CLIPModel.from_pretrained(src).eval()
        processor = CLIPProcessor.from_pretrained(src)
        calibration = _calibration(model, processor)
        shift = _fit_shift(calibration, target_match_cosine, gap=0.1)
        with torch.no_grad():
            bias_step = torch.linalg.pinv(model.text_projection.weight) @ shift
            residual = float((model.text_projection.weight @ bias_step - shift).norm() / shift.norm())
            model.text_model.final_layer_norm.bias += bias_step
            if logit_scale is not None:
                model.logit_scale.fill_(math.log(logit_scale))
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    cosines = _shifted_cosines(shift, calibration)
    matching = cosines.gather(1, calibration.text_labels[:, None]).squeeze(1)
    report = {
        "source": str(src),
        "target_match_cosine": target_match_cosine,
        "shift_norm": round(float(shift.norm()), 4),
        "logit_scale": round(model.logit_scale.exp().item(), 3),
        "projection_residual": residual,  # |W c - v| / |v|: 0 unless the projection lost rank
        "calibration_match_cosine": round(float(matching.mean()), 4),
        "calibration_other_cosine": round(float((cosines.sum(1) - matching).mean() / (cosines.shape[1] - 1)), 4),
    }
    (dst / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return dst


# ---------------------------------------------------------------- cache


def _cache_key() -> str:
    """Changes whenever the corpus or the training code does, so a stale model is never reused."""
    digest = hashlib.sha256()
    for module in (corpus.__file__, __file__, Path(__file__).with_name("tiny_multilingual.py")):
        digest.update(Path(module).read_bytes())
    return digest.hexdigest()[:12]


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One builder at a time per cache folder (parallel test workers would otherwise all train)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_once(final: Path, build: Callable[[Path], object]) -> Path:
    """Build into a temporary folder next to `final` and rename it into place: never half a model."""
    if (final / REPORT_FILE).exists():
        return final
    with _locked(final.parent):
        if (final / REPORT_FILE).exists():
            return final
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            build(staging)
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


MULTILINGUAL = "multilingual"  # the student text encoder's folder inside the tiny CLIP's


def ensure_tiny_clip(cache_dir: Path) -> Path:
    """The trained tiny CLIP folder under `cache_dir`, training it (and distilling its multilingual
    student into its `multilingual` folder) on first use."""
    def build(staging: Path) -> None:
        from common.devkit.tiny_multilingual import distill_student

        train_tiny_clip(staging)
        distill_student(staging, staging / MULTILINGUAL)

    return _build_once(cache_dir / f"tiny-clip-{_cache_key()}", build)


def ensure_shifted_tiny_clip(cache_dir: Path) -> Path:
    """The tiny CLIP with real CLIP's modality gap, built from `ensure_tiny_clip` on first use."""
    base = ensure_tiny_clip(cache_dir)
    return _build_once(cache_dir / f"{base.name}-shifted", lambda staging: shift_text_embeddings(base, staging))
