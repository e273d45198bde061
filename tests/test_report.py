"""report.json counts and the message that says why nothing was kept."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from common.pipeline.reasons import stage_of
from common.pipeline.report import failure_message, stage_counts


def _report(candidates: int, dropped: dict[str, int]) -> dict[str, object]:
    return {"counts": stage_counts(candidates, Counter(dropped), 0), "dropped": dropped,
            "thresholds": {"min_samples": 3, "eps": 0.18}}


@pytest.mark.parametrize(
    ("candidates", "dropped", "expected"),
    [
        (0, {}, "no candidates"),
        (3, {"http_404": 2, "timeout": 1}, "none of the 3 candidates could be downloaded (http_404 x2, timeout x1)"),
        (4, {"blurry": 3, "too_small": 1}, "all 4 downloaded images failed the quality checks (blurry x3, too_small x1)"),
        (5, {"not_an_image": 1, "no_cluster": 4}, "no cluster: 4 unique images passed the checks"),
    ],
)
def test_the_first_stage_that_lost_everything_is_named(candidates: int, dropped: dict[str, int], expected: str) -> None:
    assert expected in failure_message(_report(candidates, dropped))


def test_counts_follow_the_stages() -> None:
    dropped = Counter({"http_404": 2, "blurry": 3, "near_duplicate_phash": 1, "other_cluster": 4})
    assert stage_counts(20, dropped, 10) == {
        "candidates": 20, "downloaded": 18, "passed_quality": 15, "unique": 14, "kept": 10,
    }


@pytest.mark.parametrize(("reason", "stage"), [("http_503", "download"), ("robots_noai", "download"),
                                               ("decompression_bomb", "quality"), ("duplicate_bytes", "duplicates"),
                                               ("over_limit", "selection")])
def test_every_reason_belongs_to_a_stage(reason: str, stage: str) -> None:
    assert stage_of(reason) == stage


def test_the_reasons_registry_loads_no_stage() -> None:
    """The API and the report explain a reason without importing OpenCV, aiohttp or torch for its string."""
    code = "import sys, common.pipeline.reasons; print(sorted({'cv2', 'aiohttp', 'torch', 'PIL'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
