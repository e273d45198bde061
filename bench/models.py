"""Random-weight CLIP folders for timing the real `ClipEmbedder(path)` load and inference path.

Weights do not change speed, so a CLIP with ViT-B/32's configuration and random weights times
exactly what openai/clip-vit-base-patch32 would, without any download.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
)

from common.devkit.tiny_clip import build_tokenizer

_SPEC_FILE = "bench_spec.json"


@dataclass(frozen=True)
class ClipSpec:
    """The sizes that decide a CLIP's cost; the defaults are ViT-B/32's."""

    name: str = "vit-b32-random"
    vision_hidden: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    patch: int = 32
    image_size: int = 224
    text_hidden: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_vocab: int = 49408
    projection: int = 512


VIT_B32 = ClipSpec()
# Quick to run, yet with ViT-B/32's 224 px input, so queued CLIP inputs weigh what they weigh in production.
SMALL = ClipSpec("small-random", vision_hidden=64, vision_layers=2, vision_heads=2, text_hidden=64,
                 text_layers=2, text_heads=2, text_vocab=1024, projection=64)


def clip_config(spec: ClipSpec, tokenizer: CLIPTokenizer) -> CLIPConfig:
    text = CLIPTextConfig(
        vocab_size=max(spec.text_vocab, len(tokenizer)), hidden_size=spec.text_hidden,
        intermediate_size=4 * spec.text_hidden, num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads, max_position_embeddings=77, projection_dim=spec.projection,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden, intermediate_size=4 * spec.vision_hidden, num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads, patch_size=spec.patch, image_size=spec.image_size,
        projection_dim=spec.projection,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=spec.projection)


def ensure_random_clip(cache_dir: Path, spec: ClipSpec, seed: int = 0) -> Path:
    """A save_pretrained folder (model + processor) for `spec`, built once and reused while the spec matches."""
    out = cache_dir / spec.name
    marker = out / _SPEC_FILE
    if marker.exists() and json.loads(marker.read_text()) == asdict(spec):
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(out)
    size = spec.image_size
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    CLIPModel(clip_config(spec, tokenizer)).eval().save_pretrained(out)
    marker.write_text(json.dumps(asdict(spec)))  # written last: a half-built folder is rebuilt
    return out


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
