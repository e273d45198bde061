"""The downloader: candidate URLs in, one `Download` record per URL out, as each one finishes.

One aiohttp session per call, with the SSRF rules of `netsafety`, a bounded number of requests in
flight (globally and per host), capped and streamed bodies, magic-byte type detection, the
`X-Robots-Tag` opt-out, and retries with backoff for transient failures only. A per-URL problem
never raises: it becomes `Download(reason=<code in reasons.REASONS>, detail=<sentence>)`.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import Any

import aiohttp
from yarl import URL

from common.config import Settings
from common.pipeline import netsafety
from common.pipeline.records import Download
from common.pipeline.retry_after import retry_after_s, retry_wait

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ROBOTS_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_CHUNK = 64 * 1024
_SNIFF_BYTES = 32
_ACCEPT = "image/webp,image/jpeg,image/png,image/gif,image/bmp;q=0.9,*/*;q=0.1"


def sniff_image_format(head: bytes) -> str | None:
    """jpeg, png, webp, gif or bmp from the first bytes of a body; None for anything else."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_HEADER_SIZES:
        return "bmp"
    return None


def robots_forbid(values: Iterable[str], user_agent: str) -> bool:
    """True if an X-Robots-Tag value opts out, for everyone or for our bot (`name: directive`)."""
    token = user_agent.split("/", 1)[0].strip().lower()
    for value in values:
        applies = True  # "otherbot: noai, noindex" scopes the rest of the value to otherbot
        for item in value.lower().split(","):
            name, sep, rest = (part.strip() for part in item.partition(":"))
            if sep and name not in _VALUED_DIRECTIVES:
                applies, name = name == token, rest
            if applies and name in ROBOTS_DIRECTIVES:
                return True
    return False


class _Failure(Exception):
    """Why one attempt failed, whether it may be retried, and what the response said."""

    def __init__(self, reason: str, detail: str, *, retry: bool = False, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.retry, self.retry_after = reason, detail, retry, retry_after
        self.meta: dict[str, Any] = {}


def _classify(exc: BaseException, settings: Settings) -> _Failure:
    if isinstance(exc, netsafety.UnsafeURLError):
        return _Failure(exc.reason, exc.detail)
    if isinstance(exc, aiohttp.TooManyRedirects):
        return _Failure("too_many_redirects", f"More than {settings.max_redirects} redirects.")
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return _Failure("invalid_url", f"The URL or a redirect target is not a valid http(s) URL ({exc}).")
    if isinstance(exc, asyncio.TimeoutError):
        limits = f"connect {settings.connect_timeout_s:g} s, read {settings.read_timeout_s:g} s, " \
                 f"total {settings.total_timeout_s:g} s"
        return _Failure("timeout", f"No complete answer within the time limits ({limits}).", retry=True)
    transient = isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | OSError)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return _Failure("connection_error", f"The connection failed ({text[:240]}).", retry=transient)


def _check_response(resp: aiohttp.ClientResponse, settings: Settings) -> None:
    if not 200 <= resp.status < 300:
        wait = retry_after_s(resp.headers.get(aiohttp.hdrs.RETRY_AFTER))
        raise _Failure(f"http_{resp.status}", f"The server answered {resp.status} {resp.reason or ''}".strip() + ".",
                       retry=resp.status in RETRY_STATUSES, retry_after=wait)
    robots = resp.headers.getall("X-Robots-Tag", [])
    if settings.honour_robots_tag and robots_forbid(robots, settings.user_agent):
        raise _Failure("robots_noai", f"X-Robots-Tag {'; '.join(robots)!r} opts out of AI use.")
    length = resp.content_length
    if length is not None and length > settings.max_bytes:
        raise _Failure("too_large", f"Content-Length {length} is above the {settings.max_bytes}-byte cap.")


def _require_image(head: bytes | bytearray) -> str:
    if (fmt := sniff_image_format(bytes(head[:_SNIFF_BYTES]))) is None:
        raise _Failure("not_an_image", "The body does not start like a JPEG, PNG, WebP, GIF or BMP file.")
    return fmt


async def _read_image(resp: aiohttp.ClientResponse, max_bytes: int) -> tuple[bytes, str]:
    """Stream the body, stopping at the byte cap or as soon as the first bytes are not an image."""
    body = bytearray()
    fmt: str | None = None
    async for chunk in resp.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise _Failure("too_large", f"The body passed the {max_bytes}-byte cap.")
        if fmt is None and len(body) >= _SNIFF_BYTES:
            fmt = _require_image(body)
    if not body:
        raise _Failure("empty_body", "The server sent an empty body.")
    return bytes(body), fmt or _require_image(body)


async def _attempt(session: aiohttp.ClientSession, url: URL, original: str, settings: Settings) -> Download:
    """One request (redirects included); a `_Failure` for every problem."""
    try:
        # aiohttp stops when the redirect count *reaches* max_redirects, hence the +1.
        async with session.get(url, max_redirects=settings.max_redirects + 1) as resp:
            meta = {"status": resp.status, "final_url": str(resp.url),
                    "content_type": resp.headers.get(aiohttp.hdrs.CONTENT_TYPE)}
            try:
                _check_response(resp, settings)
                data, fmt = await _read_image(resp, settings.max_bytes)
            except _Failure as failure:
                failure.meta = meta
                raise
            return Download(original, data=data, image_format=fmt, **meta)
    except _Failure:
        raise
    except Exception as exc:  # noqa: BLE001 - any per-URL problem becomes a reason, never a crash
        raise _classify(exc, settings) from exc


def _retry_delay(failure: _Failure, attempt: int, settings: Settings) -> float | None:
    """Seconds to wait before the next attempt, or None to give up."""
    if not failure.retry or attempt > settings.retries:
        return None
    wait = retry_wait(attempt, failure.retry_after, settings.retry_backoff_s, settings.max_retry_after_s)
    if wait is None:
        failure.detail += f" It asked to retry after {failure.retry_after:g} s, over the limit."
    return wait


async def _fetch_one(session: aiohttp.ClientSession, url: URL, original: str, settings: Settings,
                     host_slots: asyncio.Semaphore) -> Download:
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            async with host_slots:  # waiting here does not eat into the request's timeouts
                download = await _attempt(session, url, original, settings)
            return replace(download, attempts=attempt, elapsed_s=time.monotonic() - started)
        except _Failure as failure:
            if (delay := _retry_delay(failure, attempt, settings)) is None:
                return Download(original, reason=failure.reason, detail=failure.detail, attempts=attempt,
                                elapsed_s=time.monotonic() - started, **failure.meta)
        await asyncio.sleep(delay)


def _open_session(settings: Settings) -> aiohttp.ClientSession:
    connector = netsafety.SafeConnector(
        allow_private_addresses=settings.allow_private_addresses, limit=settings.concurrency,
        limit_per_host=settings.per_host_concurrency, ttl_dns_cache=10)
    timeout = aiohttp.ClientTimeout(total=settings.total_timeout_s, sock_connect=settings.connect_timeout_s,
                                    sock_read=settings.read_timeout_s)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": settings.user_agent, "Accept": _ACCEPT},
        middlewares=(netsafety.redirect_guard(settings),))


def _precheck(url: str, seen: set[str], settings: Settings) -> URL | Download:
    """The URL to fetch, or the Download that settles it without a request."""
    try:
        parsed = netsafety.check_url(url, settings)
    except netsafety.UnsafeURLError as exc:
        return Download(url, reason=exc.reason, detail=exc.detail, attempts=0)
    key = str(parsed.with_fragment(None))
    if key in seen:
        return Download(url, reason="duplicate_url", detail="This URL was already fetched.", attempts=0)
    seen.add(key)
    return parsed


async def _finished(pending: set[asyncio.Task[Download]], keep: int) -> AsyncIterator[Download]:
    """Yield downloads as they finish until at most `keep` are still pending."""
    while len(pending) > keep:
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            pending.discard(task)
            yield task.result()


async def fetch_stream(urls: Iterable[str], settings: Settings) -> AsyncIterator[Download]:
    """Yield one Download per input URL in completion order, with at most `concurrency` in flight."""
    seen: set[str] = set()
    host_slots: collections.defaultdict[str, asyncio.Semaphore] = collections.defaultdict(
        lambda: asyncio.Semaphore(settings.per_host_concurrency))
    pending: set[asyncio.Task[Download]] = set()
    async with _open_session(settings) as session:
        try:
            for url in urls:
                checked = _precheck(url, seen, settings)
                if isinstance(checked, Download):
                    yield checked
                    continue
                slots = host_slots[f"{checked.raw_host}:{checked.port}"]
                pending.add(asyncio.create_task(_fetch_one(session, checked, url, settings, slots)))
                async for download in _finished(pending, keep=settings.concurrency - 1):
                    yield download
            async for download in _finished(pending, keep=0):
                yield download
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def fetch_all(urls: Iterable[str], settings: Settings) -> list[Download]:
    """Fetch every URL and return the Downloads in completion order (a blocking wrapper)."""

    async def run() -> list[Download]:
        return [download async for download in fetch_stream(urls, settings)]

    return asyncio.run(run())
