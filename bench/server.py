"""Serve corpus files from a separate process and give the pipeline settings that may reach it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.config import Settings

ROOT = Path(__file__).resolve().parents[1]

# The fixture server is one host, so the per-host cap would otherwise throttle every run.
FIXTURE_OVERRIDES: dict[str, Any] = {"allow_private_addresses": True, "concurrency": 64, "per_host_concurrency": 64}


def fixture_settings(**overrides: Any) -> Settings:
    """Product defaults, except what a single 127.0.0.1 host needs (and any `overrides`)."""
    return Settings(**{**FIXTURE_OVERRIDES, **overrides})


def child_env() -> dict[str, str]:
    """The environment for bench child processes: the project root importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


@contextmanager
def served(files: Sequence[Path], delay_s: float) -> Iterator[list[str]]:
    """Start `bench.serve_child` for `files` (same order) and yield their URLs; stop it afterwards."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("\n".join(str(f.resolve()) for f in files))
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.serve_child", "--files", listing.name, "--delay", str(delay_s)],
        cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        base = child.stdout.readline().strip()
        if not base:
            raise RuntimeError(f"the image server process exited with {child.wait()}")
        yield [base + f.name for f in files]
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        os.unlink(listing.name)
