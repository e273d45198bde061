"""Small measuring helpers shared by the benchmarks: rates, rounding, peak memory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Stopwatch:
    """Wall-clock seconds of a `with` block (`seconds` is set when the block ends)."""

    seconds: float = 0.0


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    watch = Stopwatch()
    started = time.perf_counter()
    try:
        yield watch
    finally:
        watch.seconds = time.perf_counter() - started


def rate(count: float, seconds: float) -> float:
    """Items per second, rounded for the report (0 when nothing was timed)."""
    return round(count / seconds, 2) if seconds > 0 else 0.0


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either was not measured."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (VmHWM is the peak RSS, VmRSS the current one) in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None
