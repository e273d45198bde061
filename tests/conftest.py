"""Session fixtures shared by the tests: the tiny CLIP models and the fixture search results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.devkit.demo import tiny_model_settings
from common.devkit.fake_naver import FakeNaver
from common.devkit.image_server import ImageServer
from common.devkit.scenario import Scenario, build_scenario
from common.devkit.tiny_clip import ensure_shifted_tiny_clip, ensure_tiny_clip

# Trained once per checkout (about two minutes) and reused by later runs; ignored by git.
MODEL_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "cvdb"


@pytest.fixture(scope="session")
def tiny_clip() -> Path:
    return ensure_tiny_clip(MODEL_CACHE)


@pytest.fixture(scope="session")
def shifted_clip(tiny_clip: Path) -> Path:
    """The tiny model with every text embedding moved by one vector: real CLIP's modality gap."""
    return ensure_shifted_tiny_clip(MODEL_CACHE)


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture(scope="session")
def scenario(image_server: ImageServer) -> Scenario:
    return build_scenario(image_server, seed=0)


@pytest.fixture(scope="session")
def fake_naver(scenario: Scenario) -> Iterator[FakeNaver]:
    """A fake Naver whose results are the scenario's pictures (the default `naver` source)."""
    with FakeNaver(image_urls=scenario.urls, modes={STALLED_QUERY: "stall"}) as naver:
        yield naver


# A search for this hangs inside one answer of the fake Naver (test_service: cancel by revoke).
STALLED_QUERY = "멈춘 검색"
ORIGINAL_PAGE = Path(__file__).resolve().parent / "original_page"


def service_settings(tiny_clip: Path, fake_naver: FakeNaver) -> dict[str, object]:
    """What the service's workers and `cvdb build` both run with in the service tests."""
    # A lost task is re-sent after 8 s without progress (180 s by default): the tests kill workers.
    return {**tiny_model_settings(tiny_clip), **fake_naver.settings_overrides(), "fetch_chunk_size": 20,
            "sweep_every_s": 2, "stall_resend_s": 8}


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path, fake_naver: FakeNaver) -> Iterator[Any]:
    """The whole service as real processes: API, two CPU workers, the GPU worker, beat, Flower."""
    from service_harness import Service

    # /static/ serves a stand-in for the original tool's dashboard (test_original_dashboard).
    settings = {**service_settings(tiny_clip, fake_naver), "original_dashboard_dir": ORIGINAL_PAGE}
    running = Service(tmp_path_factory.mktemp("service"), settings)
    try:
        yield running.start()
    finally:
        running.stop()
