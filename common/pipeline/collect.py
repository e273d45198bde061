"""Download, check and embed candidates in one overlapped pass with bounded memory.

An asyncio thread downloads; a thread pool hands each file to a decode worker process (decode,
checks, fingerprints and CLIP's input there, killed past its time budget: see decode_pool) and stages what comes
back; the calling thread embeds full batches as they form. Queues are bounded, so memory does
not grow with the number of candidates, and the network and decoding overlap with the (slowest)
embedding.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.config import Settings
from common.pipeline.accept import Rejected, StagedImage, stage_download
from common.pipeline.clip_input import ClipInput
from common.pipeline.decode_pool import shared_pool
from common.pipeline.fetch import fetch_stream
from common.pipeline.progress import Cancelled, Progress
from common.pipeline.records import Download, Outcome

if TYPE_CHECKING:
    from common.pipeline.embed import ClipEmbedder

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

    async def produce_until_stopped() -> None:
        # Downloads still waiting on slow servers are abandoned at once when the consumer stops.
        work = asyncio.create_task(produce())
        while not work.done() and not stop.is_set():
            await asyncio.wait({work}, timeout=0.2)
        work.cancel()
        try:
            await work
        except asyncio.CancelledError:
            pass

    def run() -> None:
        try:
            asyncio.run(produce_until_stopped())
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)
        finally:
            put(_DONE)

    thread = threading.Thread(target=run, name="downloader", daemon=True)
    thread.start()
    try:
        while (item := _next(results, progress)) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=10)


def _next(results: queue.Queue[object], progress: Progress) -> object:
    """The next download; checks for a cancel while waiting, however slow the servers are."""
    while True:
        if progress.cancelled():
            raise Cancelled("cancelled during download")
        try:
            return results.get(timeout=0.25)
        except queue.Empty:
            continue


class _Embedder:
    """Accumulates staged images and embeds them batch by batch. While the model is still loading,
    up to `backlog` batches wait in memory, so downloads and checks go on instead of stalling."""

    def __init__(self, embedder: ClipEmbedder, batch_size: int, result: Collected, progress: Progress,
                 backlog: int = 8) -> None:
        self.embedder, self.batch_size, self.result, self.progress = embedder, batch_size, result, progress
        self.backlog = backlog * batch_size
        self.pending: list[StagedImage] = []
        # When the last batch ended and how long it took; none yet, so the first takes every core.
        self.last_end, self.last_seconds = time.perf_counter(), math.inf

    def add(self, staged: StagedImage) -> None:
        self.pending.append(staged)
        if len(self.pending) >= self.batch_size and (self.embedder.ready() or len(self.pending) >= self.backlog):
            self.flush()

    def flush(self, last: bool = False) -> None:
        while self.pending:
            started = time.perf_counter()
            # A batch that filled faster than the last one took to embed: embedding holds the pass
            # back (the decode workers wait on it), so it takes every core. Otherwise they are busy
            # and it shares the cores with them; with the downloads over, nothing else runs.
            share_cpu = not last and started - self.last_end > self.last_seconds
            batch, self.pending = self.pending[: self.batch_size], self.pending[self.batch_size :]
            vectors = self.embedder.embed_crops(np.stack([s.clip_crop for s in batch]), share_cpu)
            self.last_end = time.perf_counter()
            self.last_seconds = self.last_end - started
            self.result.embed_seconds += self.last_seconds
            for staged in batch:
                staged.clip_crop = None  # the staged download on disk is all that is kept
            self.result.staged.extend(batch)
            self.result.embeddings.append(vectors)
            self.progress.advance("embed", len(batch))


def stage_stream(
    urls: Sequence[str], settings: Settings, staging_dir: Path, clip: ClipInput | None, progress: Progress
) -> Iterator[StagedImage | Rejected]:
    """Download, check and stage every URL; yields one StagedImage or Rejected per URL.

    Used whole by `collect` (the local runner) and per chunk by the service's fetch tasks.
    Identical files are caught here, by their bytes, before any decoding. One thread per decode
    worker: each waits on its worker's pipe (the GIL is free meanwhile) and stages the result.
    """
    seen_bytes: dict[str, str] = {}
    max_pending = 2 * settings.batch_size + settings.decode_workers
    decoders = shared_pool(settings.decode_workers)  # persistent across calls; closed at exit
    with ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode") as pool:
        pending: set[Future[StagedImage | Rejected]] = set()
        for download in iterate_downloads(urls, settings, progress):
            progress.advance("download")
            if not download.ok:
                yield Rejected(download.url, download.reason or "download_failed", download.detail or "")
                continue
            digest = hashlib.sha256(download.data or b"").hexdigest()
            if digest in seen_bytes:
                yield Rejected(download.url, "duplicate_bytes", f"same file as {seen_bytes[digest]}", sha256=digest)
                continue
            seen_bytes[digest] = download.url
            pending.add(pool.submit(stage_download, download.url, download.data or b"", download.image_format or "",
                                    digest, settings, staging_dir, clip, decoders))
            if len(pending) >= max_pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from _results(done, progress)
        yield from _results(pending, progress)


def _results(done: set[Future[StagedImage | Rejected]], progress: Progress) -> Iterator[StagedImage | Rejected]:
    for future in done:
        progress.advance("filter")
        yield future.result()
    if progress.cancelled():
        raise Cancelled("cancelled while filtering")


def rejection_extra(item: Rejected) -> dict[str, object]:
    """What an outcome records beside its reason: the file's digest and the scores measured."""
    extra: dict[str, object] = {"sha256": item.sha256} if item.sha256 else {}
    return {**extra, "scores": item.scores} if item.scores else extra


def collect(
    urls: Sequence[str], settings: Settings, embedder: ClipEmbedder, staging_dir: Path, progress: Progress
) -> Collected:
    """Every URL ends as a staged+embedded image or a drop reason in `outcomes`."""
    result = Collected(outcomes={url: Outcome(url) for url in urls})
    batcher = _Embedder(embedder, settings.batch_size, result, progress)
    for stage, total in (("download", len(urls)), ("filter", None), ("embed", None)):
        progress.start(stage, total)
    for item in stage_stream(urls, settings, staging_dir, embedder.clip_input, progress):
        if isinstance(item, Rejected):
            result.drop(item.url, item.reason, item.detail, **rejection_extra(item))
        else:
            batcher.add(item)
    batcher.flush(last=True)
    for stage in ("download", "filter", "embed"):
        progress.finish(stage)
    return result
