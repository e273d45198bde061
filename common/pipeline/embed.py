"""CLIP image and text embeddings through transformers: batched, any device, L2-normalised."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from common.pipeline.clip_input import ClipInput, ModelLoadError, cannot_load

__all__ = ["ClipEmbedder", "ModelLoadError", "load_processor", "model_input", "pick_device"]


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str) -> torch.dtype:
    """auto: float16 on CUDA (half the memory, twice the throughput); bfloat16 on a CPU that computes
    it natively (ViT-B/32 about 1.9x faster than float32, cosine to it above 0.9999); float32 on
    any other CPU, where bfloat16 is emulated and slower."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and native_bfloat16() else torch.float32


def native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), as Linux lists them."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns an output object whose pooler_output holds the projection."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalise(vectors: torch.Tensor) -> np.ndarray:
    vectors = vectors.float()
    return torch.nn.functional.normalize(vectors, dim=-1).cpu().numpy().astype(np.float32)


def model_input(crops: np.ndarray, clip: ClipInput, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 crops (N, 3, h, w) -> CLIP's pixel_values on `device` in `dtype`: rescaled and normalised
    per channel in float32 there, as the image processor does, so bytes cross to a GPU, not floats."""
    pixels = torch.from_numpy(np.ascontiguousarray(crops)).to(device).float()
    mean = torch.tensor(clip.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(clip.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    # In place: the same arithmetic, without three more batch-sized tensors to allocate and fault in.
    return pixels.mul_(clip.rescale).sub_(mean).div_(std).to(dtype)


def load_processor(model: str) -> CLIPProcessor:
    try:
        return CLIPProcessor.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise cannot_load(model, exc) from exc


class ClipEmbedder:
    """Loads the model once; `clip_input.crop` is thread-safe CPU work, `embed_crops` runs the network."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto") -> None:
        self.model_name = model
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.processor = load_processor(model)
        self.clip_input = ClipInput.of(self.processor.image_processor)
        try:
            self.model = CLIPModel.from_pretrained(model, dtype=self.dtype).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise cannot_load(model, exc) from exc
        self._text_encoders: dict[str, Any] = {}  # loaded once each, kept for later queries
        self._threads = torch.get_num_threads()  # torch's own choice: one per core

    def ready(self) -> bool:
        """Loaded in the constructor: always ready (a LoadingEmbedder says otherwise while it loads)."""
        return True

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature (100 for ViT-B/32): the scale its similarities are meant on."""
        return float(self.model.logit_scale.detach().float().exp().cpu())

    @torch.inference_mode()
    def embed_crops(self, crops: np.ndarray, share_cpu: bool = False) -> np.ndarray:
        """Unit vectors for a batch of `ClipInput.crop` outputs ((N, 3, h, w) uint8).

        share_cpu: other processes (the decode workers) keep the cores busy meanwhile, so the CPU
        runs it on one thread: more threads would only wait on each other and those processes."""
        self._use_threads(1 if share_cpu else self._threads)
        return self._embed(model_input(crops, self.clip_input, self.device, self.dtype))

    def _use_threads(self, threads: int) -> None:
        if self.device.type == "cpu" and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def embed_prepared(self, pixel_values: np.ndarray) -> np.ndarray:
        """Unit vectors for pixel values already rescaled and normalised (the image processor's output)."""
        return self._embed(torch.from_numpy(np.ascontiguousarray(pixel_values)).to(self.device, self.dtype))

    def _embed(self, batch: torch.Tensor) -> np.ndarray:
        return _normalise(_features(self.model.get_image_features(pixel_values=batch)))

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        chunks = [
            self.embed_crops(np.stack([self.clip_input.crop(im) for im in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], encoder: str | None = None) -> np.ndarray:
        """Unit vectors in the image space: from CLIP's own text tower, or with `encoder`, from a
        sentence-transformers encoder trained into it (e.g. clip-ViT-B-32-multilingual-v1)."""
        if encoder is not None:
            return _normalise(self.text_encoder(encoder).encode(list(texts), convert_to_tensor=True))
        tokens = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return _normalise(_features(self.model.get_text_features(**tokens)))

    def text_encoder(self, name: str) -> Any:
        """The sentence-transformers encoder `name`, loaded (or downloaded) on first use, its width checked."""
        if name not in self._text_encoders:
            from sentence_transformers import SentenceTransformer

            try:
                encoder = SentenceTransformer(name, device=str(self.device))
            except (OSError, ValueError) as exc:
                raise ModelLoadError(
                    f"could not load the text encoder {name!r}: {str(exc).rstrip('. ')}. Give a sentence-transformers "
                    "model this machine can download, or a local folder (--text-model / CVDB_TEXT_MODEL, "
                    "CVDB_MULTILINGUAL_TEXT_MODEL), or pass --text-model none") from exc
            width = encoder.get_embedding_dimension() or len(encoder.encode(["a"])[0])
            if width != self.dim:
                raise ModelLoadError(
                    f"text encoder {name!r} gives {width}-dimensional vectors but {self.model_name!r} embeds images "
                    f"in {self.dim} dimensions; use a text encoder trained into this CLIP model's image space")
            self._text_encoders[name] = encoder
        return self._text_encoders[name]

    def describe(self) -> dict[str, object]:
        return {
            "model": self.model_name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "logit_scale": round(self.logit_scale, 4),
            "embedding_dim": self.dim,
        }
