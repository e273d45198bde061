"""What every image source shares: the error type, the `Source` protocol, and item helpers.

A source turns a query into `Candidate` records. Whatever goes wrong on the way (a captcha, a
changed page, a bad answer, missing credentials) surfaces as one `SourceError` whose message
says what happened and what the user can do about it, never as a raw traceback.
"""

from __future__ import annotations

import asyncio
import codecs
import html
import re
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import aiohttp

from common.pipeline.records import Candidate
from common.pipeline.retry_after import retry_after_s, retry_wait

if TYPE_CHECKING:
    from common.config import Settings

T = TypeVar("T")


class SourceError(Exception):
    """A source could not deliver results; `message` says why and what to do.

    `kind` is a short machine-readable word (blocked, adult, empty, changed, bad_answer, http,
    network, rate_limited, credentials, quota, api_error, browser, input; `failed` when every
    source of `auto` failed) so callers can tell an empty result (try another source) from a
    misconfiguration (tell the user).
    """

    def __init__(self, source: str, message: str, *, kind: str = "error") -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message
        self.kind = kind


class Source(Protocol):
    """An image search engine (or a list of URLs) that yields candidates in rank order."""

    name: str

    def search(self, query: str, limit: int) -> list[Candidate]: ...


def empty_result(source: str, query: str) -> SourceError:
    return SourceError(
        source, f"no images found for {query!r}; try a broader or differently spelled query", kind="empty"
    )


def require_query(source: str, query: str, limit: int) -> str:
    """Reject calls that cannot succeed before any request is made."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if not query.strip():
        raise SourceError(source, "the query is empty; say what the images should show", kind="input")
    return query.strip()


# --- URLs -------------------------------------------------------------------------------------

def is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value.strip())
    except ValueError:  # e.g. a malformed IPv6 host
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _bytes_to_url(raw: bytes) -> str:
    """UTF-8 text as is; any other byte above 0x7f stays percent-escaped, as it was sent.

    Naver originals often carry EUC-KR escapes (`%B0%ED`); turning those into text would
    change the URL and the image host would answer 404.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)


def original_from_thumbnail(thumb: object) -> str | None:
    """The original image URL inside a `search.pstatic.net/{common,sunny}/?src=...` thumbnail.

    The `src` value is decoded exactly once: the original URL may itself contain escapes
    that belong to it (e.g. EUC-KR file names) and must reach the image host unchanged.
    """
    if not isinstance(thumb, str) or "src=" not in thumb:
        return None
    for pair in urlsplit(thumb).query.split("&"):
        name, _, value = pair.partition("=")
        if name == "src" and value:
            original = _bytes_to_url(unquote_to_bytes(value.replace("+", " ")))
            return original if is_http_url(original) else None
    return None


def unquote_url_field(value: str) -> str:
    """Decode a field that arrived percent-encoded (legacy JSONP), but never a real URL again."""
    if re.match(r"(?i)https?%3A", value):
        return _bytes_to_url(unquote_to_bytes(value))
    return value


# --- Item fields ------------------------------------------------------------------------------

_TAG = re.compile(r"<[^>]*>")


def strip_html(value: object) -> str | None:
    """Titles carry `<mark>`/`<b>` highlighting and entities; keep the plain text."""
    if not isinstance(value, str):
        return None
    text = html.unescape(_TAG.sub("", value)).strip()
    return " ".join(text.split()) or None


def to_int(value: object) -> int | None:
    """Sizes come as numbers or (Open API) strings; anything else means unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def url_field(item: Mapping[str, Any], key: str) -> str | None:
    """A URL field; the legacy JSONP form percent-encodes whole URLs (`http%3A%2F%2F...`)."""
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        return None
    value = unquote_url_field(value.strip())
    return value if is_http_url(value) else None


def candidate_from_item(
    item: object, source: str, rank: int = 0, *, percent_encoded: bool = False
) -> Candidate | None:
    """One Naver search item (embedded object, XHR JSON or page data) -> Candidate, or None to skip.

    Skipped: ads and other non-image types, items whose original size is 0 (Naver lists
    those but they are broken or placeholders), and items with no usable http(s) URL.
    `percent_encoded` marks the legacy JSONP form, whose titles are percent-encoded too.
    """
    if not isinstance(item, Mapping):
        return None
    kind = item.get("type")
    if kind is not None and kind != "image":
        return None
    width, height = to_int(item.get("orgWidth")), to_int(item.get("orgHeight"))
    if width == 0 or height == 0:
        return None
    thumb = url_field(item, "thumb")
    url = url_field(item, "originalUrl")
    if url is None:  # fall back to the original hidden in the thumbnail URL
        url = original_from_thumbnail(thumb) or original_from_thumbnail(url_field(item, "viewerThumb"))
    if url is None:
        return None
    title = item.get("title")
    if percent_encoded and isinstance(title, str):
        title = unquote(title)
    return Candidate(
        url=url,
        thumbnail_url=thumb,
        source_page=url_field(item, "link"),
        title=strip_html(title),
        width=width,
        height=height,
        source=source,
        rank=rank,
    )


def finalize(candidates: Iterable[Candidate], limit: int) -> list[Candidate]:
    """Drop repeated URLs (engines list one image under several pages), cap, rank from 1."""
    seen: set[str] = set()
    kept: list[Candidate] = []
    for candidate in candidates:
        if candidate.url in seen:
            continue
        seen.add(candidate.url)
        kept.append(replace(candidate, rank=len(kept) + 1))
        if len(kept) >= limit:
            break
    return kept


# --- HTTP ------------------------------------------------------------------------------------

MAX_BODY_BYTES = 10 * 1024 * 1024  # a search answer is ~100 KiB; anything near this is not one
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ACCEPT_LANGUAGE = "ko-KR,ko;q=0.9,en;q=0.8"  # Naver answers Korean queries best in Korean


@dataclass(frozen=True)
class Reply:
    status: int
    body: str
    content_type: str
    url: str


Sleep = Callable[[float], Awaitable[None]]


class HttpClient:
    """A polite aiohttp GET: honest User-Agent, retries with backoff, Retry-After, a byte cap.

    Answers with any status come back as a `Reply` (callers map statuses to messages);
    only failures no caller can interpret (network, oversized body, an unreasonable
    Retry-After) raise SourceError here.
    """

    def __init__(
        self,
        source: str,
        settings: Settings,
        *,
        sleep: Sleep | None = None,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.source = source
        self.settings = settings
        self.sleep = sleep or asyncio.sleep
        self.retry_statuses = retry_statuses
        self.max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        timeout = aiohttp.ClientTimeout(
            total=self.settings.total_timeout_s,
            sock_connect=self.settings.connect_timeout_s,
            sock_read=self.settings.read_timeout_s,
        )
        headers = {"User-Agent": self.settings.user_agent, "Accept-Language": ACCEPT_LANGUAGE}
        self._session = aiohttp.ClientSession(timeout=timeout, headers=headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(
        self, url: str, params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None
    ) -> Reply:
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                reply, retry_after = await self._get_once(url, params, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if last:
                    why = f"{type(exc).__name__}: {exc}" if str(exc) else "no answer in time"
                    raise SourceError(
                        self.source,
                        f"could not reach {urlsplit(url).netloc} ({why}); "
                        "check the network connection or try again later",
                        kind="network",
                    ) from exc
                await self.sleep(self._wait_for(attempt, None, url))
                continue
            if reply.status not in self.retry_statuses or last:
                return reply
            await self.sleep(self._wait_for(attempt, retry_after, url))
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _wait_for(self, attempt: int, retry_after: str | None, url: str) -> float:
        asked = retry_after_s(retry_after)
        # attempt 0 failed: this is retry 1
        wait = retry_wait(attempt + 1, asked, self.settings.retry_backoff_s, self.settings.max_retry_after_s)
        if wait is None:
            raise SourceError(
                self.source,
                f"{urlsplit(url).netloc} asks to wait {asked:.0f} s before the next request "
                f"(more than max_retry_after_s={self.settings.max_retry_after_s:.0f}); try again later",
                kind="rate_limited",
            )
        return wait

    async def _get_once(
        self, url: str, params: Mapping[str, str] | None, headers: Mapping[str, str] | None
    ) -> tuple[Reply, str | None]:
        assert self._session is not None, "use HttpClient as an async context manager"
        async with self._session.get(
            url, params=params, headers=headers, max_redirects=self.settings.max_redirects
        ) as response:
            body = await self._read_capped(response, url)
            charset = response.charset or "utf-8"
            text = body.decode(charset if _known_codec(charset) else "utf-8", errors="replace")
            reply = Reply(response.status, text, response.content_type, str(response.url))
            return reply, response.headers.get("Retry-After")

    async def _read_capped(self, response: aiohttp.ClientResponse, url: str) -> bytes:
        declared = response.content_length
        if declared is not None and declared > self.max_bytes:
            raise self._too_large(url)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large(url)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, url: str) -> SourceError:
        return SourceError(
            self.source,
            f"the answer from {urlsplit(url).netloc} is larger than {self.max_bytes // (1024 * 1024)} MiB, "
            "which no search page is; the service changed or something in between rewrote it",
            kind="bad_answer",
        )


def _known_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


# --- Sync wrapper -----------------------------------------------------------------------------

def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code.

    Sources are synchronous for their callers (the CLI, Celery tasks); when the caller is
    already inside an event loop, the coroutine runs on a private loop in a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="source-loop", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return cast(T, box["value"])
