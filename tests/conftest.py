"""Session fixtures shared by the tests: the tiny CLIP models and the fixture search results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
