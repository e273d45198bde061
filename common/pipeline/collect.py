"""Download, check and embed candidates in one overlapped pass with bounded memory.

An asyncio thread downloads; a thread pool decodes, checks and stages; the calling thread
embeds full batches as they form. Queues are bounded, so memory does not grow with the
number of candidates, and the network and decoding overlap with the (slowest) embedding.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.config import Settings
from common.pipeline.accept import Rejected, StagedImage, stage_download
from common.pipeline.embed import ClipEmbedder
from common.pipeline.fetch import fetch_stream
from common.pipeline.progress import Cancelled, Progress
from common.pipeline.records import Download, Outcome

_DONE = object()


@dataclass
class Collected:
    staged: list[StagedImage] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    embed_seconds: float = 0.0

    def drop(self, url: str, reason: str, detail: str, **extra: object) -> None:
        outcome = self.outcomes.setdefault(url, Outcome(url))
        outcome.status, outcome.reason, outcome.detail = "dropped", reason, detail
        outcome.extra.update(extra)

    def matrix(self, dim: int) -> np.ndarray:
        return np.concatenate(self.embeddings) if self.embeddings else np.zeros((0, dim), np.float32)


def iterate_downloads(urls: Sequence[str], settings: Settings, progress: Progress) -> Iterator[Download]:
    """Run the async downloader in its own thread and hand results over a bounded queue."""
    results: queue.Queue[object] = queue.Queue(maxsize=max(16, settings.concurrency))
    stop = threading.Event()

    def put(item: object) -> None:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    async def produce() -> None:
        async for download in fetch_stream(urls, settings):
            await asyncio.to_thread(put, download)
            if stop.is_set():
                return

    def run() -> None:
        try:
            asyncio.run(produce())
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)
        finally:
            put(_DONE)

    thread = threading.Thread(target=run, name="downloader", daemon=True)
    thread.start()
    try:
        while (item := results.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            if progress.cancelled():
                raise Cancelled("cancelled during download")
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=10)


class _Embedder:
    """Accumulates staged images and embeds them batch by batch."""

    def __init__(self, embedder: ClipEmbedder, batch_size: int, result: Collected, progress: Progress) -> None:
        self.embedder, self.batch_size, self.result, self.progress = embedder, batch_size, result, progress
        self.pending: list[StagedImage] = []

    def add(self, staged: StagedImage) -> None:
        self.pending.append(staged)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        started = time.perf_counter()
        vectors = self.embedder.embed_prepared(np.stack([s.pixel_values for s in self.pending]))
        self.result.embed_seconds += time.perf_counter() - started
        for staged in self.pending:
            staged.pixel_values = None  # the staged JPEG on disk is all that is kept
        self.result.staged.extend(self.pending)
        self.result.embeddings.append(vectors)
        self.progress.advance("embed", len(self.pending))
        self.pending = []


def collect(
    urls: Sequence[str], settings: Settings, embedder: ClipEmbedder, staging_dir: Path, progress: Progress
) -> Collected:
    """Every URL ends as a staged+embedded image or a drop reason in `outcomes`."""
    result = Collected(outcomes={url: Outcome(url) for url in urls})
    batcher = _Embedder(embedder, settings.batch_size, result, progress)
    seen_bytes: dict[str, str] = {}
    max_pending = 2 * settings.batch_size + settings.decode_workers
    for stage, total in (("download", len(urls)), ("filter", None), ("embed", None)):
        progress.start(stage, total)
    with ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode") as pool:
        pending: set[Future[StagedImage | Rejected]] = set()
        for download in iterate_downloads(urls, settings, progress):
            progress.advance("download")
            if not download.ok:
                result.drop(download.url, download.reason or "download_failed", download.detail or "")
                continue
            digest = hashlib.sha256(download.data or b"").hexdigest()
            if digest in seen_bytes:
                result.drop(download.url, "duplicate_bytes", f"same file as {seen_bytes[digest]}", sha256=digest)
                continue
            seen_bytes[digest] = download.url
            pending.add(pool.submit(stage_download, download.url, download.data or b"", download.image_format or "",
                                    digest, settings, staging_dir, embedder.prepare))
            if len(pending) >= max_pending:
                pending = _drain(pending, result, batcher, progress, wait_all=False)
        _drain(pending, result, batcher, progress, wait_all=True)
    batcher.flush()
    for stage in ("download", "filter", "embed"):
        progress.finish(stage)
    return result


def _drain(
    pending: set[Future[StagedImage | Rejected]], result: Collected, batcher: _Embedder, progress: Progress, wait_all: bool
) -> set[Future[StagedImage | Rejected]]:
    done, still = wait(pending, return_when="ALL_COMPLETED" if wait_all else FIRST_COMPLETED)
    for future in done:
        item = future.result()
        progress.advance("filter")
        if isinstance(item, Rejected):
            result.drop(item.url, item.reason, item.detail, scores=item.scores)
        else:
            batcher.add(item)
    if progress.cancelled():
        raise Cancelled("cancelled while filtering")
    return still
