"""Run the benchmark suite and write one JSON report.

    python bench/run.py --images 2000 --out bench/results/latest.json

Every number comes from this one run; the `ratios` section compares measurements taken minutes
apart on the same machine, which survives a noisy machine better than any absolute time.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path; put the project root there instead, so
# `bench.*` and `common.*` import and no bench module shadows a top-level module of the same name.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.suite import main

if __name__ == "__main__":
    main()
