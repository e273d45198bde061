"""`cvdb demo`: the whole flow offline, against generated search results and a tiny CLIP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.devkit import corpus
from common.devkit.fake_naver import FakeNaver
from common.devkit.image_server import ImageServer
from common.devkit.scenario import Scenario, build_scenario

QUERY = corpus.TARGET

# The tiny model puts distinct synthetic pictures of one class as close together (cosine up to
# 0.998) as real CLIP puts copies, so its embedding near-copy check is off (1.0 = identical only);
# copies are still caught by bytes, pixels and confirmed pHash.
TINY_MODEL_NEAR_DUPLICATE_COSINE = 1.0


def tiny_model_settings(model_dir: Path) -> dict[str, object]:
    """Settings for runs against fixture servers on 127.0.0.1 with the tiny model (and, for
    non-English queries, its distilled multilingual student, when the folder has one)."""
    from common.devkit.tiny_clip import MULTILINGUAL

    student = model_dir / MULTILINGUAL
    return {
        "model": str(model_dir),
        **({"multilingual_text_model": str(student)} if student.is_dir() else {}),
        "allow_private_addresses": True,
        "near_duplicate_cosine": TINY_MODEL_NEAR_DUPLICATE_COSINE,
        "retry_backoff_s": 0.05,
    }


@dataclass(frozen=True)
class DemoSearch:
    scenario: Scenario
    naver_settings: dict[str, object]  # points the default `naver` source at the fake


@contextmanager
def serve_demo_results(seed: int = 0) -> Iterator[DemoSearch]:
    """Serve the generated pictures and a fake Naver whose results are those pictures."""
    with ImageServer() as server:
        scenario = build_scenario(server, seed=seed)
        with FakeNaver(image_urls=scenario.urls) as naver:
            yield DemoSearch(scenario, naver.settings_overrides())
