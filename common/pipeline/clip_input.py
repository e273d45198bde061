"""CLIP's image input made with Pillow and numpy: the image processor's resize and centre crop
without its per-image Python, and without torch or transformers, so any thread or process can
make it cheaply; the rescale and normalisation follow on the model's device, a batch at a time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Where a saved model keeps its image processor's settings: transformers 5 writes them into
# processor_config.json, older versions (and the hub's CLIP models) into preprocessor_config.json.
CONFIG_FILES = ("preprocessor_config.json", "processor_config.json")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ModelLoadError(Exception):
    """The model name or path could not be loaded; the message says what to do."""


def cannot_load(model: str, why: object) -> ModelLoadError:
    return ModelLoadError(
        f"could not load CLIP model {model!r}: {str(why).rstrip('. ')}. Give a Hugging Face model name that this "
        "machine can download, or a local folder saved with save_pretrained (--model / CVDB_MODEL).")


@dataclass(frozen=True)
class ClipInput:
    """The preprocessing numbers of one CLIP model, as its image processor holds them."""

    shortest_edge: int
    crop_height: int
    crop_width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = Image.Resampling.BICUBIC
    rescale: float = 1 / 255

    @classmethod
    def of(cls, image_processor: Any) -> ClipInput:
        """Read the numbers from a transformers CLIP image processor, through the JSON it saves."""
        return cls.from_config(image_processor.to_dict())

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ClipInput:
        """From a saved processor's JSON: the image processor's part, in either file's layout."""
        config = config.get("image_processor", config)
        size = config.get("size", 224)
        shortest = size.get("shortest_edge") if isinstance(size, dict) else size
        crop = config.get("crop_size", shortest)
        if not isinstance(shortest, int):
            raise ValueError(f"the image processor resizes to {size}, not by its shortest edge as CLIP does")
        height, width = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
        return cls(shortest, int(height), int(width), tuple(config.get("image_mean", OPENAI_MEAN)),
                   tuple(config.get("image_std", OPENAI_STD)), int(config.get("resample", Image.Resampling.BICUBIC)),
                   float(config.get("rescale_factor", 1 / 255)))

    def crop(self, image: Image.Image) -> np.ndarray:
        """(3, crop_height, crop_width) uint8: the processor's resize and centre crop, channels first.
        Its rescale and normalisation are left to the model's device (`embed.model_input`), so what
        crosses the decode pool's pipes and waits in staging is a quarter of the float input's size."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        width, height = image.size
        # The shorter side becomes shortest_edge; the longer keeps the aspect, rounded down.
        if width <= height:
            size = (self.shortest_edge, int(self.shortest_edge * height / width))
        else:
            size = (int(self.shortest_edge * width / height), self.shortest_edge)
        resized = image.resize(size, self.resample)
        top, left = (size[1] - self.crop_height) // 2, (size[0] - self.crop_width) // 2
        box = (left, top, left + self.crop_width, top + self.crop_height)
        return np.ascontiguousarray(np.asarray(resized.crop(box)).transpose(2, 0, 1))


def read_clip_input(model: str) -> ClipInput:
    """The model's preprocessing, read from its saved JSON without importing torch or transformers
    (seconds of start-up): from a local folder, or from the Hugging Face hub (cached like the weights)."""
    folder = Path(model).expanduser()
    try:
        for name in CONFIG_FILES:
            path = folder / name if folder.is_dir() else _hub_file(model, name)
            if path is not None and path.is_file():
                return ClipInput.from_config(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise cannot_load(model, exc) from exc
    raise cannot_load(model, f"it has none of {', '.join(CONFIG_FILES)}")


def _hub_file(model: str, name: str) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(model, name))
    except RemoteEntryNotFoundError:  # the repository has no such file; not-downloadable stays an error
        return None
