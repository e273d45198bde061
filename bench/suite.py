"""The benchmark suite: runs the selected sections in order and writes one JSON report (see README.md)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.utils import logging as hf_logging

from bench import models, targets
from bench.cluster import cluster_rate
from bench.corpus_cache import ensure_corpus
from bench.decode import decode_rate
from bench.decode_steps import step_times
from bench.download import download_rate
from bench.embed import embed_rates, timed_rate
from bench.end_to_end import collect_rate
from bench.memory import peak_memory
from bench.server import FIXTURE_OVERRIDES, ROOT, fixture_settings, served
from bench.service import run_service_bench, service_ratios, unavailable
from bench.timing import ratio, stopwatch
from bench.versus_img2dataset import installed_version, ours, theirs, whole_build
from common.pipeline.embed import ClipEmbedder, model_input

# Embed-only runs right before and after collect(): the same batch size under the same background load.
BRACKET_IMAGES = 64
SECTIONS = ("decode", "embed", "cluster", "download", "end_to_end", "img2dataset", "memory", "service")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="corpus size: downloads, img2dataset, memory (default 2000)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench", help="corpus and model cache")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of sections: {','.join(SECTIONS)}")
    parser.add_argument("--delay", type=float, default=0.1, help="simulated CDN delay (s) for end-to-end, img2dataset and service")
    parser.add_argument("--decode-images", type=int, default=1000, help="images for the decode+quality rate")
    parser.add_argument("--embed-images", type=int, default=128, help="images timed per batch size, over all rounds")
    parser.add_argument("--embed-rounds", type=int, default=4, help="interleaved rounds of the batch sizes")
    parser.add_argument("--step-rounds", type=int, default=5, help="passes of the per-step timing; each step reports its median")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--e2e-images", type=int, default=500, help="candidates for the end-to-end collect() run")
    parser.add_argument("--cluster-sizes", default="1000,10000")
    parser.add_argument("--memory-sizes", default=None, help="two candidate counts (default images/4,images)")
    parser.add_argument("--decode-workers", type=int, default=2, help="decode threads, ours (as Settings.decode_workers)")
    parser.add_argument("--img2dataset-processes", type=int, default=2)
    parser.add_argument("--img2dataset-threads", type=int, default=64, help="threads per img2dataset process")
    parser.add_argument("--device", default="auto", help="embedding device for the ViT-B/32 runs")
    parser.add_argument("--dtype", default="auto", help="CLIP's number format for the ViT-B/32 runs (auto, float32, bfloat16, float16)")
    parser.add_argument("--service-images", type=int, default=300, help="service: images the fake Naver returns (per job)")
    parser.add_argument("--service-jobs", type=int, default=4, help="service: jobs submitted at once per worker count")
    parser.add_argument("--service-workers", default="1,2", help="service: CPU worker counts, one service start each")
    parser.add_argument("--service-chunk", type=int, default=50, help="service: fetch_chunk_size (URLs per fetch task)")
    parser.add_argument("--service-latency-threads", type=int, default=8, help="service: client threads of the API load")
    parser.add_argument("--service-latency-s", type=float, default=20.0, help="service: seconds of API load")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if unknown := {s.strip() for s in args.only.split(",") if s.strip()} - set(SECTIONS):
        parser.error(f"unknown --only section(s): {', '.join(sorted(unknown))}")
    return args


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


class Suite:
    """Runs the selected sections in order; each adds to `results` and may reuse earlier ones."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.only = {s.strip() for s in args.only.split(",") if s.strip()}
        self.results: dict[str, Any] = {"machine": machine(), "args": _jsonable(vars(args)), "stages": {}}
        self.files: list[Path] = []
        self._embedder: ClipEmbedder | None = None
        self._pool: np.ndarray | None = None

    # -- shared inputs ------------------------------------------------------------------------------

    def corpus(self) -> None:
        with stopwatch() as watch:
            self.files, rendered = ensure_corpus(self.args.cache / f"corpus-seed{self.args.seed}", self.args.images, self.args.seed)
        sizes = [f.stat().st_size for f in self.files]
        self.results["corpus"] = {"images": len(self.files), "rendered_now": rendered, "seconds": round(watch.seconds, 2),
                                  "mean_kb": round(sum(sizes) / len(sizes) / 1024, 1), "folder": str(self.files[0].parent)}
        log(f"corpus: {len(self.files)} images ({rendered} rendered now, {watch.seconds:.1f} s)")

    def embedder(self) -> ClipEmbedder:
        """ViT-B/32-sized CLIP with random weights, loaded through the product's ClipEmbedder."""
        if self._embedder is None:
            with stopwatch() as watch:
                path = models.ensure_random_clip(self.args.cache / "models", models.VIT_B32, self.args.seed)
                self._embedder = ClipEmbedder(str(path), self.args.device, self.args.dtype)
            self.results["model"] = {"spec": models.NAMES[models.VIT_B32], "path": str(path), "load_seconds": round(watch.seconds, 2),
                                     "parameters": models.parameter_count(self._embedder.model), **self._embedder.describe()}
            log(f"model: {models.NAMES[models.VIT_B32]} on {self._embedder.device} ({watch.seconds:.1f} s to build/load)")
        return self._embedder

    def pool(self) -> np.ndarray:
        """64 CLIP input crops from the corpus, cycled by the embedding benchmarks."""
        if self._pool is None:
            embedder = self.embedder()
            self._pool = np.stack([embedder.clip_input.crop(Image.open(f).convert("RGB")) for f in self.files[:64]])
        return self._pool

    def run(self, section: str, work: Callable[[], None]) -> None:
        if section in self.only:
            with stopwatch() as watch:
                work()
            log(f"{section}: done in {watch.seconds:.1f} s")

    # -- sections -----------------------------------------------------------------------------------

    def decode(self) -> None:
        settings = fixture_settings()
        blobs = [f.read_bytes() for f in self.files[: self.args.decode_images]]
        stages = self.results["stages"]
        stages["decode_quality"] = decode_rate(blobs, settings, self.args.decode_workers)
        embedder = self.embedder()
        clip = embedder.clip_input
        stages["decode_quality_clip_prepare"] = decode_rate(blobs[:500], settings, self.args.decode_workers, clip)
        # As the product runs it: decode worker processes, one and then `decode_workers` of them.
        for workers in sorted({1, self.args.decode_workers}):
            stages[f"decode_quality_clip_prepare_processes_{workers}"] = decode_rate(
                blobs[:500], settings, workers, clip, processes=True)
        processor = lambda image: embedder.processor(images=image, return_tensors="np")["pixel_values"][0]  # noqa: E731
        normalise = lambda crops: model_input(crops, clip, embedder.device, embedder.dtype)  # noqa: E731
        stages["decode_steps_ms_per_image"] = step_times(blobs[:50], settings, clip.crop, normalise, processor,
                                                         self.args.step_rounds)

    def embed(self) -> None:
        self.results["stages"]["embed"] = embed_rates(self.embedder(), self.pool(), ints(self.args.batch_sizes),
                                                      self.args.embed_images, self.args.embed_rounds)

    def cluster(self) -> None:
        settings = fixture_settings()
        self.results["stages"]["cluster"] = {
            str(n): cluster_rate(n, settings.eps, settings.min_samples, seed=self.args.seed) for n in ints(self.args.cluster_sizes)}

    def download(self) -> None:
        for delay in (0.0, self.args.delay):
            with served(self.files, delay) as urls:
                self.results["stages"][f"download_delay_{delay:g}"] = download_rate(urls, fixture_settings(), delay)

    def end_to_end(self) -> None:
        settings = fixture_settings(batch_size=32, decode_workers=self.args.decode_workers)
        embedder, pool = self.embedder(), self.pool()
        with served(self.files[: self.args.e2e_images], self.args.delay) as urls:
            before = timed_rate(embedder, pool, settings.batch_size, BRACKET_IMAGES)
            measured = collect_rate(urls, settings, embedder)
            after = timed_rate(embedder, pool, settings.batch_size, BRACKET_IMAGES)
        self.results["end_to_end"] = {"delay_s": self.args.delay, **measured,
                                      "embed_only_images_per_s_before_after": [before, after]}

    def img2dataset(self) -> None:
        from common.devkit.demo import tiny_model_settings
        from common.devkit.tiny_clip import ensure_tiny_clip

        processes, threads = self.args.img2dataset_processes, self.args.img2dataset_threads
        per_shard = max(1, len(self.files) // (4 * processes))  # enough shards to keep every process busy
        with served(self.files, self.args.delay) as urls:
            mine = ours(urls, fixture_settings(), self.args.decode_workers)
            mine_decode_only = ours(urls, fixture_settings(), self.args.decode_workers, full=False)
            other = theirs(urls, processes, threads, per_shard)
            tiny = tiny_model_settings(ensure_tiny_clip(ROOT / ".cache" / "cvdb"))
            build = whole_build(urls, {**tiny, **FIXTURE_OVERRIDES}, ROOT / ".venv" / "bin" / "cvdb")
        self.results["versus_img2dataset"] = {
            "delay_s": self.args.delay, "img2dataset_version": installed_version(), "number_sample_per_shard": per_shard,
            "ours": mine, "ours_decode_only": mine_decode_only, "img2dataset": other, "whole_build": build}

    def memory(self) -> None:
        sizes = ints(self.args.memory_sizes) if self.args.memory_sizes else [max(1, self.args.images // 4), self.args.images]
        small = models.ensure_random_clip(self.args.cache / "models", models.SMALL, self.args.seed)
        with served(self.files[: max(sizes)], 0.0) as urls:
            self.results["memory"] = peak_memory(urls, sizes, small, batch_size=32)

    def service(self) -> None:
        why = unavailable()
        if why:
            self.results["service"] = {"skipped": why}
            log(f"service: skipped ({why})")
            return
        from common.devkit.tiny_clip import ensure_tiny_clip

        files, _ = ensure_corpus(self.args.cache / f"corpus-seed{self.args.seed}", self.args.service_images, self.args.seed)
        self.results["service"] = run_service_bench(
            files, ensure_tiny_clip(ROOT / ".cache" / "cvdb"), ints(self.args.service_workers), self.args.service_jobs,
            self.args.service_chunk, self.args.service_latency_threads, self.args.service_latency_s, self.args.delay, log)

    # -- summary ------------------------------------------------------------------------------------

    def ratios(self) -> dict[str, Any]:
        r, stages = self.results, self.results["stages"]
        embed = stages.get("embed", {}).get("by_batch", {})
        e2e = r.get("end_to_end", {})
        bracket = e2e.get("embed_only_images_per_s_before_after")
        embed_same = sum(bracket) / len(bracket) if bracket else embed.get(str(e2e.get("batch_size")), {}).get("images_per_s")
        decode_prep = stages.get("decode_quality_clip_prepare", {}).get("images_per_s")
        versus = r.get("versus_img2dataset", {})
        theirs_rate = versus.get("img2dataset", {}).get("images_per_s")
        out: dict[str, Any] = {
            "end_to_end_over_embed_only": ratio(e2e.get("images_per_s"), embed_same),
            "embed_only_reference_images_per_s": round(embed_same, 2) if embed_same else None,
            # Both stages share the same cores: perfect overlap of CPU-bound work gives D/(D+E), not 1.
            "end_to_end_ceiling_if_cpu_shared": ratio(decode_prep, decode_prep + embed_same)
            if decode_prep and embed_same else None,
            "ours_over_img2dataset": ratio(versus.get("ours", {}).get("images_per_s"), theirs_rate),
            "ours_decode_only_over_img2dataset": ratio(versus.get("ours_decode_only", {}).get("images_per_s"), theirs_rate),
            "ours_over_img2dataset_wall": ratio(versus.get("ours", {}).get("images_per_s"),
                                                versus.get("img2dataset", {}).get("images_per_s_wall")),
            # Wall time over wall time: theirs downloads and decodes; ours does everything up to the dataset.
            "whole_build_over_img2dataset": ratio(versus.get("img2dataset", {}).get("seconds_wall"),
                                                  versus.get("whole_build", {}).get("seconds_wall")),
            "peak_memory_large_over_small": r.get("memory", {}).get("peak_ratio"),
            **service_ratios(r.get("service", {})),
        }
        processes = [stages.get(f"decode_quality_clip_prepare_processes_{n}", {}).get("images_per_s")
                     for n in sorted({1, self.args.decode_workers})]
        out["decode_processes_n_over_1"] = ratio(processes[-1], processes[0]) if len(processes) == 2 else None
        steps = stages.get("decode_steps_ms_per_image", {})
        ours = (steps.get("clip_crop") or 0) + (steps.get("clip_normalise_in_batch") or 0)
        out["clip_prepare_pillow_over_processor_ms"] = ratio(ours or None, steps.get("clip_prepare_by_processor"))
        out["per_image_cpu_ms"] = steps.get("total")
        for size, row in embed.items():
            out[f"embed_batch_{size}_over_batch_1"] = ratio(row["images_per_s"], embed.get("1", {}).get("images_per_s"))
        delayed = stages.get(f"download_delay_{self.args.delay:g}", {})
        out["download_delayed_over_ceiling"] = ratio(delayed.get("images_per_s"), delayed.get("ceiling_images_per_s"))
        return out

    def finish(self) -> list[targets.Verdict]:
        self.results["ratios"] = self.ratios()
        found = targets.verdicts(self.results["ratios"])
        self.results["targets"] = [v.to_dict() for v in found]
        self.results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return found


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    suite = Suite(args)
    suite.results["fixture_settings"] = FIXTURE_OVERRIDES
    if suite.only - {"service"}:  # the service section renders only the pictures it serves
        suite.corpus()
    for section in SECTIONS:
        suite.run(section, getattr(suite, section))
    found = suite.finish()
    text = json.dumps(suite.results, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    for verdict in found:
        print(verdict.line())
    print(f"written to {args.out}")

