"""The targets, read from one run's results as within-run ratios, and their verdict lines."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    name: str
    value: float | None
    op: str  # ">=" or "<="
    goal: float
    meaning: str

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.goal if self.op == ">=" else self.value <= self.goal

    def line(self) -> str:
        state = {True: "target met", False: "target NOT met", None: "not measured"}[self.met]
        return f"{self.name}: {self.value} (target {self.op} {self.goal}) -> {state}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def verdicts(ratios: dict[str, Any]) -> list[Verdict]:
    return [
        Verdict("end_to_end_over_embed_only", ratios.get("end_to_end_over_embed_only"), ">=", 0.9,
                "collect() embedded images/s over embed_crops-only images/s at the same batch size"),
        Verdict("ours_over_img2dataset", ratios.get("ours_over_img2dataset"), ">=", 2.0,
                "our download+decode/quality images/s over img2dataset's, same URLs and delay"),
        Verdict("whole_build_over_img2dataset", ratios.get("whole_build_over_img2dataset"), ">=", 1.0,
                "img2dataset's wall time (download + decode) over the whole cvdb build's, same URLs and delay"),
        Verdict("peak_memory_large_over_small", ratios.get("peak_memory_large_over_small"), "<=", 1.2,
                "peak RSS of collect() over the larger candidate count over the smaller one"),
        Verdict("decode_processes_n_over_1", ratios.get("decode_processes_n_over_1"), ">=", 1.8,
                "decode/check/CLIP-input images/s with --decode-workers worker processes over one"),
        Verdict("per_image_cpu_ms", ratios.get("per_image_cpu_ms"), "<=", 8.0,
                "ms of CPU per image for every per-image step, single-threaded, on the bench corpus"),
    ]
