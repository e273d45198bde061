"""One `collect()` pass in a fresh process, printing its peak RSS as JSON (run by bench.memory).

    python -m bench.memory_child --urls URLS.txt --model CLIP_DIR --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from PIL import Image

from bench.server import fixture_settings
from bench.timing import proc_status_mb, stopwatch
from common.pipeline.collect import collect
from common.pipeline.embed import ClipEmbedder
from common.pipeline.progress import SilentProgress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--urls", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    urls = args.urls.read_text().split()
    settings = fixture_settings(batch_size=args.batch_size)
    embedder = ClipEmbedder(args.model, "cpu")
    embedder.embed_crops(embedder.clip_input.crop(Image.new("RGB", (320, 320)))[None])  # warm up before the baseline
    baseline = proc_status_mb("VmRSS")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as staging, stopwatch() as watch:
        result = collect(urls, settings, embedder, Path(staging), SilentProgress())
    print(json.dumps({
        "candidates": len(urls),
        "embedded": len(result.staged),
        "seconds": round(watch.seconds, 3),
        "rss_before_collect_mb": baseline,
        "peak_rss_mb": proc_status_mb("VmHWM"),
    }))


if __name__ == "__main__":
    main()
