"""Where `stage_download`'s time goes: each of its steps timed alone, single-threaded, in ms/image."""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from common.config import Settings
from common.pipeline.decode import as_array, decode_image, draft_scale, encode_jpeg, open_header, to_upright_rgb
from common.pipeline.dedup import fingerprint
from common.pipeline.export import atomic_write
from common.pipeline.quality import assess_pixels, downscale_long_side

Prepare = Callable[[Image.Image], np.ndarray]
NOT_PER_CANDIDATE = ("clip_prepare_by_processor", "export_reencode_per_kept")


class _Laps:
    """Adds the time since the previous lap to a named step."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._last = time.perf_counter()

    def restart(self) -> None:
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.totals[step] += now - self._last
        self._last = now


def step_times(blobs: Sequence[bytes], settings: Settings, crop: Prepare | None = None,
               normalise: Callable[[np.ndarray], object] | None = None, processor_prepare: Prepare | None = None,
               rounds: int = 5) -> dict[str, object]:
    """Mean ms per image of each step of stage_download, in its order: the median of `rounds` passes
    over the same images (the first pass pays for lazy imports and cold caches; a busy neighbour
    slows a pass, not every one). `normalise` is CLIP's rescale and normalisation of a batch of
    crops (done on the model's device, a batch at a time), counted per image."""
    passes = [_one_pass(blobs, settings, crop, normalise, processor_prepare) for _ in range(max(1, rounds))]
    steps = {step: round(float(np.median([p[step] for p in passes])), 2) for step in passes[0]}
    total = sum(v for k, v in steps.items() if k not in NOT_PER_CANDIDATE)
    totals = [round(sum(v for k, v in p.items() if k not in NOT_PER_CANDIDATE), 2) for p in passes]
    return {**steps, "total": round(total, 2), "rounds": len(passes), "total_by_round": totals}


def _one_pass(blobs: Sequence[bytes], settings: Settings, crop: Prepare | None,
              normalise: Callable[[np.ndarray], object] | None, processor_prepare: Prepare | None) -> dict[str, float]:
    laps = _Laps()
    crops = []
    with tempfile.TemporaryDirectory(prefix="bench-steps-") as staging:
        for index, blob in enumerate(blobs):
            laps.restart()
            header = open_header(blob, settings.max_pixels, settings.max_side)
            image = to_upright_rgb(header, blob, draft_scale(header, settings.sharpness_side))
            laps.lap("decode")
            work = downscale_long_side(as_array(image), settings.sharpness_side)
            laps.lap("working_copy")
            assess_pixels(work, settings)
            laps.lap("quality")
            atomic_write(Path(staging) / f"{index}.download", blob, durable=False)
            laps.lap("staged_write")
            work_image = Image.fromarray(work)
            fingerprint(image, work_image)
            laps.lap("fingerprint")
            if crop is not None:
                crops.append(crop(work_image))
                laps.lap("clip_crop")
            # Not per candidate (not in total): the image processor's own way, for comparison, and
            # what export does for each kept picture only (a full decode again, then the JPEG).
            if processor_prepare is not None:
                processor_prepare(work_image)
                laps.lap("clip_prepare_by_processor")
            encode_jpeg(decode_image(blob, settings.max_pixels, settings.max_side), settings.jpeg_quality)
            laps.lap("export_reencode_per_kept")
        if normalise is not None and crops:
            laps.restart()
            for start in range(0, len(crops), 32):
                normalise(np.stack(crops[start : start + 32]))
            laps.lap("clip_normalise_in_batch")
    count = max(1, len(blobs))
    return {step: 1000 * seconds / count for step, seconds in laps.totals.items()}
