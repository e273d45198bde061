"""Download + decode throughput against img2dataset on the same URLs and server delay, and the
whole `cvdb build` (search to dataset) against img2dataset's download + decode alone.

img2dataset lives in its own virtualenv (bench/.venv-img2dataset, pinned in
bench/requirements-img2dataset.txt) and runs as a subprocess with resizing and re-encoding off, so
it downloads, decodes (cv2) and writes files. Ours streams `iterate_downloads` (the downloader thread
`collect()` uses) into `stage_download` on a thread pool: decode, quality, re-encode, fingerprint, stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.timing import rate, stopwatch
from common.config import Settings
from common.pipeline.accept import Rejected, stage_download
from common.pipeline.collect import iterate_downloads
from common.pipeline.decode import DecodeError, open_header, to_upright_rgb
from common.pipeline.progress import SilentProgress

VENV = Path(__file__).resolve().parent / ".venv-img2dataset"
INSTALL = "python3 -m venv bench/.venv-img2dataset && bench/.venv-img2dataset/bin/pip install -r bench/requirements-img2dataset.txt"


def _stage(data: bytes, image_format: str, url: str, settings: Settings, staging: Path) -> str | None:
    """The product's per-image work; the drop reason, or None when the image is staged."""
    item = stage_download(url, data, image_format, hashlib.sha256(data).hexdigest(), settings, staging)
    return item.reason if isinstance(item, Rejected) else None


def _decode_only(data: bytes, image_format: str, url: str, settings: Settings, staging: Path) -> str | None:
    """Just what img2dataset does with resizing off: parse and decode the pixels."""
    try:
        to_upright_rgb(open_header(data, settings.max_pixels, settings.max_side))
    except DecodeError as exc:
        return exc.reason
    return None


def ours(urls: Sequence[str], settings: Settings, workers: int, full: bool = True) -> dict[str, Any]:
    """Images/s from the first request until the last download is processed (`full`: staged, else decoded)."""
    work = _stage if full else _decode_only
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as staging, \
            ThreadPoolExecutor(workers, thread_name_prefix="bench-decode") as pool, stopwatch() as watch:
        futures: list[Future[str | None]] = []
        failed = Counter[str]()
        for download in iterate_downloads(urls, settings, SilentProgress()):
            if download.ok:
                futures.append(pool.submit(work, download.data or b"", download.image_format or "", download.url,
                                           settings, Path(staging)))
            else:
                failed[download.reason or "download_failed"] += 1
        reasons = [future.result() for future in futures]
    return {
        "work": "stage_download (decode, quality, re-encode, fingerprint, stage)" if full else "decode only",
        "urls": len(urls),
        "downloaded": len(futures),
        "download_failures": dict(failed),
        "accepted": reasons.count(None),
        "rejected": dict(Counter(r for r in reasons if r)),
        "concurrency": settings.concurrency,
        "decode_workers": workers,
        "seconds": round(watch.seconds, 3),
        "images_per_s": rate(len(futures), watch.seconds),
    }


def img2dataset_command(url_list: Path, out_dir: Path, processes: int, threads: int, per_shard: int) -> list[str]:
    return [
        str(VENV / "bin" / "img2dataset"), f"--url_list={url_list}", "--input_format=txt", f"--output_folder={out_dir}",
        f"--processes_count={processes}", f"--thread_count={threads}", f"--number_sample_per_shard={per_shard}",
        "--resize_mode=no", "--skip_reencode=True", "--output_format=files", "--enable_wandb=False",
        "--timeout=10", "--retries=0",
    ]


def theirs(urls: Sequence[str], processes: int, threads: int, per_shard: int) -> dict[str, Any]:
    """img2dataset's images/s, from its own shard stats (start of first shard to end of last) and wall time."""
    if not (VENV / "bin" / "img2dataset").exists():
        return {"skipped": f"img2dataset is not installed; run: {INSTALL}"}
    with tempfile.TemporaryDirectory(prefix="bench-img2dataset-") as work:
        url_list, out_dir = Path(work) / "urls.txt", Path(work) / "out"
        url_list.write_text("\n".join(urls) + "\n")
        command = img2dataset_command(url_list, out_dir, processes, threads, per_shard)
        with stopwatch() as watch:
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            return {"skipped": f"img2dataset exited with {done.returncode}", "stderr_tail": done.stderr[-2000:]}
        stats = [json.loads(p.read_text()) for p in out_dir.glob("*_stats.json")]
    if not stats:
        return {"skipped": "img2dataset wrote no shard stats", "stderr_tail": done.stderr[-2000:]}
    span = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    successes = sum(s["successes"] for s in stats)
    return {
        "urls": len(urls),
        "successes": successes,
        "failed_to_download": sum(s["failed_to_download"] for s in stats),
        "failed_to_resize": sum(s["failed_to_resize"] for s in stats),
        "shards": len(stats),
        "processes": processes,
        "threads_per_process": threads,
        "seconds_shards": round(span, 3),
        "seconds_wall": round(watch.seconds, 3),
        "images_per_s": rate(successes, span),
        "images_per_s_wall": rate(successes, watch.seconds),
    }


def installed_version() -> str | None:
    pip = VENV / "bin" / "pip"
    if not pip.exists():
        return None
    shown = subprocess.run([str(pip), "show", "img2dataset"], check=False, capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in shown.splitlines() if line.startswith("Version:")), None)


def whole_build(urls: Sequence[str], settings: dict[str, object], cvdb: Path) -> dict[str, Any]:
    """`cvdb build --urls` over every URL as a user runs it (interpreter start, model load, export
    included), with `limit` set so the candidate budget takes every URL."""
    limit = -(-len(urls) // int(Settings().oversample))
    with tempfile.TemporaryDirectory(prefix="bench-build-") as work:
        url_list, data_root = Path(work) / "urls.txt", Path(work) / "data"
        url_list.write_text("\n".join(urls) + "\n")
        env = {**os.environ, **{f"CVDB_{k.upper()}": str(v) for k, v in settings.items()},
               "CVDB_DATA_ROOT": str(data_root)}
        with stopwatch() as watch:
            done = subprocess.run([str(cvdb), "build", "sunflower", "--urls", str(url_list), "--limit", str(limit),
                                   "--out", str(data_root / "out")], env=env, capture_output=True, text=True, timeout=3600)
        report = data_root / "out" / "report.json"
        counts = json.loads(report.read_text())["counts"] if report.exists() else {}
        timings = json.loads(report.read_text()).get("timings_s", {}) if report.exists() else {}
    return {"urls": len(urls), "limit": limit, "returncode": done.returncode, "seconds_wall": round(watch.seconds, 3),
            "counts": counts, "timings_s": timings, "stderr_tail": done.stderr[-600:] if done.returncode else None}
