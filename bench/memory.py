"""Peak memory of `collect()` at two candidate counts, each in a fresh process (bench.memory_child)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.server import ROOT, child_env
from bench.timing import ratio


def peak_for(urls: Sequence[str], model_dir: Path, batch_size: int) -> dict[str, Any]:
    """Run one child over `urls` and return what it printed (peak RSS included)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("\n".join(urls))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.memory_child", "--urls", listing.name, "--model", str(model_dir),
             "--batch-size", str(batch_size)],
            cwd=ROOT, env=child_env(), check=False, capture_output=True, text=True, timeout=1800,
        )
    finally:
        Path(listing.name).unlink()
    if done.returncode != 0:
        return {"candidates": len(urls), "error": done.stderr[-2000:]}
    printed: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return printed


def peak_memory(urls: Sequence[str], sizes: Sequence[int], model_dir: Path, batch_size: int) -> dict[str, Any]:
    """Peak RSS per size, and the ratio largest/smallest (flat memory means a ratio near 1)."""
    runs = [peak_for(urls[:size], model_dir, batch_size) for size in sizes]
    peaks = [run.get("peak_rss_mb") for run in runs]
    growth = [round(run["peak_rss_mb"] - run["rss_before_collect_mb"], 1) if "peak_rss_mb" in run else None for run in runs]
    return {
        "model": model_dir.name,
        "batch_size": batch_size,
        "runs": runs,
        "peak_ratio": ratio(peaks[-1], peaks[0]),
        "collect_growth_mb": growth,
    }
