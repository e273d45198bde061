"""Random-weight CLIP folders for timing the real `ClipEmbedder(path)` load and inference path.

Weights do not change speed, so a CLIP with ViT-B/32's configuration and random weights times
exactly what openai/clip-vit-base-patch32 would, without any download.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor

from common.devkit.tiny_clip import ClipSpec, build_tokenizer, clip_config

_SPEC_FILE = "bench_spec.json"

VIT_B32 = ClipSpec(vision_hidden=768, vision_layers=12, vision_heads=12, patch=32, image_size=224,
                   text_hidden=512, text_layers=12, text_heads=8, text_vocab=49408, projection=512)
# Quick to run, yet with ViT-B/32's 224 px input, so queued CLIP inputs weigh what they weigh in production.
SMALL = ClipSpec(vision_hidden=64, vision_layers=2, vision_heads=2, image_size=224, patch=32, text_hidden=64,
                 text_layers=2, text_heads=2, text_vocab=1024, projection=64)
NAMES = {VIT_B32: "vit-b32-random", SMALL: "small-random"}


def ensure_random_clip(cache_dir: Path, spec: ClipSpec, seed: int = 0) -> Path:
    """A save_pretrained folder (model + processor) for `spec`, built once and reused while the spec matches."""
    out = cache_dir / NAMES[spec]
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
