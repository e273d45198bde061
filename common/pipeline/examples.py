"""Example pictures that steer a build or a search (--like): URLs through the safe downloader, files
read with the same byte cap, and every one decoded only in a decode worker under its time budget.
What comes back is the worker's clean re-encoded JPEG, safe to open here."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from common.config import Settings
from common.pipeline.accept import Rejected
from common.pipeline.decode_pool import shared_pool
from common.pipeline.fetch import fetch_stream
from common.pipeline.sources.base import is_http_url

if TYPE_CHECKING:
    from common.pipeline.embed import ClipEmbedder

MAX_EXAMPLES = 32


class ExampleError(Exception):
    """An example picture could not be used; the message names it and says why."""


def load_examples(refs: Sequence[str], settings: Settings) -> list[bytes]:
    """Each example (an http(s) URL or a file path) as a clean JPEG, in the order given."""
    if not refs:
        return []
    if len(refs) > MAX_EXAMPLES:
        raise ExampleError(f"{len(refs)} example pictures given; use at most {MAX_EXAMPLES}")
    urls = list(dict.fromkeys(ref for ref in refs if is_http_url(ref)))
    fetched = asyncio.run(_download(urls, settings)) if urls else {}
    return [load_picture(fetched[ref] if ref in fetched else _read_file(ref, settings.max_bytes), settings,
                         f"example picture {ref}") for ref in refs]


async def _download(urls: list[str], settings: Settings) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    async for download in fetch_stream(urls, settings):
        if download.data is None or download.reason:
            raise ExampleError(f"example picture {download.url} could not be downloaded: {download.reason} "
                               f"({download.detail})")
        found[download.url] = download.data
    return found


def load_picture(data: bytes, settings: Settings, name: str = "the uploaded picture") -> bytes:
    """One picture's bytes (an upload) as a clean JPEG, decoded in a decode worker."""
    jpeg = shared_pool(settings.decode_workers).export(name, data, settings)
    if isinstance(jpeg, Rejected):
        raise ExampleError(f"{name} cannot be used: {jpeg.reason} ({_why(jpeg)})")
    return jpeg


def _why(rejected: Rejected) -> str:
    return (rejected.detail or "").removeprefix("at export: ")  # the export decoder's words; here it is the only one


def _read_file(ref: str, max_bytes: int) -> bytes:
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ExampleError(f"example picture {ref} is neither an http(s) URL nor a file here")
    if path.stat().st_size > max_bytes:
        raise ExampleError(f"example picture {ref} is larger than {max_bytes} bytes (CVDB_MAX_BYTES)")
    return path.read_bytes()


def example_vectors(jpegs: Sequence[bytes], embedder: ClipEmbedder) -> np.ndarray:
    """The examples' unit vectors, one row each (opened here: they are our own JPEGs)."""
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in jpegs]
    return embedder.embed_images(images) if images else np.zeros((0, embedder.dim), np.float32)
