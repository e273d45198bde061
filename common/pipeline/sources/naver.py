"""The `naver` source: Naver image search over plain HTTP, no browser.

The search page embeds its first results as `var imageSearchTabData = {...}` (a JavaScript
object literal, not JSON; the spacing around `=` changed in 2026, so the marker is matched
loosely). Further results come from the XHR endpoint the page itself calls, whose JSON answer
names the next page in its `url` field (empty on the last page). Older deployments answer in
JSONP (`cb({...});` or bare `({...})` with percent-encoded values); all forms are accepted.
When the page carries no object (Naver changed its markup), the XHR endpoint is asked directly.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin, urlsplit

from common.pipeline.records import Candidate
from common.pipeline.sources.base import (
    HttpClient,
    Reply,
    Sleep,
    SourceError,
    candidate_from_item,
    empty_result,
    finalize,
    require_query,
    run_sync,
    unquote_url_field,
)

if TYPE_CHECKING:
    from common.config import Settings

log = logging.getLogger(__name__)

NAME = "naver"
XHR_PAGE_SIZE = 100  # the most one XHR page returns
MAX_PAGES = 60  # a guard against a `url` chain that never ends

# 2024: `var imageSearchTabData={`; 2026: `var imageSearchTabData = {` inside varying <script> tags.
_MARKER = re.compile(r"(?:\b(?:var|let|const)\s+|\bwindow\.)imageSearchTabData\s*=\s*")
_BLOCKED = re.compile(r"captcha|wtm_captcha|보안\s*확인|security verification", re.IGNORECASE)
_ADULT = re.compile(r"class=[\"'][^\"']*\bdsc_adult\b")
_NOT_FOUND = re.compile(r"class=[\"'][^\"']*\bnot_found02\b")
_JSONP = re.compile(r"^([\w$.]*)\s*\((.*)\)\s*;?\s*$", re.DOTALL)


class BadAnswer(ValueError):
    """An answer that is not the data we expect; the message says what it was instead."""


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_url: str | None  # None: unknown, ask the XHR endpoint; "": this was the last page
    percent_encoded: bool = False


# --- Parsing ----------------------------------------------------------------------------------

def describe(text: str) -> str:
    """A short human description of an unexpected body, for error messages."""
    head = text.lstrip()[:1]
    if not head:
        return "an empty body"
    if head == "<":
        return "an HTML page"
    return f"text starting {text.strip()[:40]!r}"


def parse_payload(data: object, what: str) -> Page:
    """Check the shape shared by the embedded object and XHR JSON: {url, items} or {content: {...}}."""
    if isinstance(data, dict) and isinstance(data.get("content"), dict):
        data = data["content"]
    if not isinstance(data, dict):
        raise BadAnswer(f"{what} is a {type(data).__name__}, not an object")
    items = data.get("items")
    if items is None:  # Naver omits `items` when nothing matched
        items = []
    if not isinstance(items, list):
        raise BadAnswer(f"'items' in {what} is a {type(items).__name__}, not a list")
    next_url = data.get("url")
    if next_url is not None and not isinstance(next_url, str):
        raise BadAnswer(f"'url' in {what} is a {type(next_url).__name__}, not a string")
    return Page(items, next_url)


def parse_xhr_body(body: str) -> Page:
    """Raw JSON, JSONP `cb({...});`, or the legacy bare `({...})` with percent-encoded values."""
    text = body.strip()
    legacy = False
    if not text.startswith("{"):
        match = _JSONP.match(text)
        if match is None:
            raise BadAnswer(f"expected JSON from the XHR endpoint but got {describe(text)}")
        legacy, text = match.group(1) == "", match.group(2)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadAnswer(f"the XHR answer is not valid JSON ({exc.msg}, character {exc.pos})") from exc
    page = parse_payload(data, "the XHR answer")
    return Page(page.items, page.next_url, legacy)


def extract_embedded(page: str) -> Page | None:
    """The page's `imageSearchTabData` object, or None when the page assigns none.

    Assignments that are not object literals (`x = x || {}` in some script) are passed over.
    """
    first_error: BadAnswer | None = None
    for match in _MARKER.finditer(page):
        if page[match.end() : match.end() + 1] != "{":
            continue
        try:
            data = json.loads(js_literal_to_json(balanced_object(page, match.end())))
            return parse_payload(data, "imageSearchTabData")
        except BadAnswer as exc:
            first_error = first_error or exc
        except ValueError as exc:  # also json.JSONDecodeError
            first_error = first_error or BadAnswer(f"imageSearchTabData is not a readable object literal ({exc})")
    if first_error is not None:
        raise first_error
    return None


def balanced_object(text: str, start: int) -> str:
    """The `{...}` starting at `start`, matching braces outside string literals."""
    depth, i, quote = 0, start, ""
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
        i += 1
    raise BadAnswer("imageSearchTabData is cut off (its braces never close); the page was truncated")


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


def read_js_string(src: str, i: int) -> tuple[str, int]:
    """A JS string literal starting at `src[i]` (a quote) -> (value, index after it)."""
    quote, i = src[i], i + 1
    out: list[str] = []
    while i < len(src):
        char = src[i]
        if char == quote:
            return "".join(out), i + 1
        if char == "\\" and i + 1 < len(src):
            nxt = src[i + 1]
            if nxt == "x":
                out.append(chr(int(src[i + 2 : i + 4], 16)))
                i += 4
                continue
            if nxt == "u":
                out.append(chr(int(src[i + 2 : i + 6], 16)))
                i += 6
                continue
            if nxt != "\n":  # a backslash-newline continues the line
                out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(char)
        i += 1
    raise ValueError("unterminated string")


def js_literal_to_json(src: str) -> str:
    """Rewrite a JavaScript object literal (data only) as JSON.

    Handles what Naver's pages use: bare keys, either quote style, `\\x` escapes, trailing
    commas, `undefined` and `!0`/`!1`. Anything executable (a call, a variable) is refused.
    """
    out: list[str] = []
    i, n = 0, len(src)
    while i < n:
        char = src[i]
        if char in "\"'":
            value, i = read_js_string(src, i)
            out.append(json.dumps(value, ensure_ascii=False))
        elif char == "!" and src[i + 1 : i + 2] in ("0", "1"):
            out.append("true" if src[i + 1] == "0" else "false")
            i += 2
        elif char.isdigit() or char in "-.":
            j = i + 1
            while j < n and (src[j].isalnum() or src[j] in ".+-"):
                j += 1
            out.append(src[i:j])
            i = j
        elif char.isalpha() or char in "_$":
            j = i
            while j < n and (src[j].isalnum() or src[j] in "_$"):
                j += 1
            out.append(_word(src[i:j], src[j:].lstrip()[:1] == ":"))
            i = j
        elif char == "," and src[i + 1 :].lstrip()[:1] in ("}", "]"):
            i += 1  # a trailing comma, legal in JS, not in JSON
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _word(word: str, is_key: bool) -> str:
    if is_key:
        return json.dumps(word)
    if word in ("true", "false", "null"):
        return word
    if word == "undefined":
        return "null"
    raise ValueError(f"unexpected identifier {word!r} (code, not data)")


def page_problem(page: str, status: int) -> str | None:
    """Why a search page that carries no results has none: blocked, adult, empty, or None."""
    if status == 403 or _BLOCKED.search(page):
        return "blocked"
    if _ADULT.search(page):
        return "adult"
    if _NOT_FOUND.search(page):
        return "empty"
    return None


# --- The source -------------------------------------------------------------------------------

class NaverSource:
    """Naver image search read from its own page data and XHR endpoint."""

    name = NAME

    def __init__(self, settings: Settings, *, sleep: Sleep | None = None) -> None:
        self.settings = settings
        self.sleep = sleep  # injectable so tests can check waits without waiting

    def search(self, query: str, limit: int) -> list[Candidate]:
        query = require_query(self.name, query, limit)
        return run_sync(self._search(query, limit))

    async def _search(self, query: str, limit: int) -> list[Candidate]:
        async with HttpClient(self.name, self.settings, sleep=self.sleep) as http:
            first = await self._first_page(http, query)
            found = self._candidates(first, [])
            next_url = first.next_url
            if next_url is None:  # the page did not say where more results are: ask the XHR
                next_url = self._xhr_url(query, start=len(first.items) + 1)
            await self._follow(http, query, next_url, found, limit)
        if not found:
            raise empty_result(self.name, query)
        return finalize(found, limit)

    async def _follow(self, http: HttpClient, query: str, url: str, found: list[Candidate], limit: int) -> None:
        """Page through the XHR endpoint until `limit` unique URLs, an empty page, or no `url`."""
        seen_urls: set[str] = set()
        for _ in range(MAX_PAGES):
            if not url or url in seen_urls or len({c.url for c in found}) >= limit:
                return
            seen_urls.add(url)
            await http.sleep(self.settings.naver_page_delay_s)  # politeness between pages
            try:
                page = await self._xhr_page(http, url, query)
            except SourceError as exc:
                if not found:
                    raise
                # Keep what earlier pages gave; a later page failing is not worth losing them.
                log.warning("naver: stopped paging after %d candidates: %s", len(found), exc.message)
                return
            if not page.items:
                return
            self._candidates(page, found)
            url = self._next_url(page.next_url)

    def _candidates(self, page: Page, found: list[Candidate]) -> list[Candidate]:
        for item in page.items:
            candidate = candidate_from_item(item, self.name, percent_encoded=page.percent_encoded)
            if candidate is not None:
                found.append(candidate)
        return found

    async def _first_page(self, http: HttpClient, query: str) -> Page:
        """The search page's embedded results; on a changed page, the XHR endpoint's first page."""
        params = {"where": "image", "sm": "tab_jum", "query": query}
        reply = await http.get(self.settings.naver_search_url, params=params, headers={"Accept": "text/html"})
        page, trouble = None, "the search page no longer carries the imageSearchTabData object"
        try:
            page = extract_embedded(reply.body) if reply.status == 200 else None
        except BadAnswer as exc:
            trouble = f"the search page's data could not be read ({exc})"
            log.warning("naver: %s; asking the XHR endpoint directly", trouble)
        if page is not None and page.items:
            return page
        problem = page_problem(reply.body, reply.status)
        if problem is not None:
            raise self._page_error(problem, query, reply)
        if reply.status != 200:
            raise self._http_error(reply, "the search page")
        return await self._changed_page(http, query, trouble)

    async def _changed_page(self, http: HttpClient, query: str, trouble: str) -> Page:
        try:
            page = await self._xhr_page(http, self._xhr_url(query, start=1), query)
        except SourceError as exc:
            if exc.kind not in ("http", "bad_answer"):
                raise  # blocked, rate-limited, unreachable: says more than "changed"
            raise SourceError(
                self.name,
                f"{trouble}, and the XHR endpoint failed too: {exc.message}. Naver probably changed "
                "its pages: update common/pipeline/sources/naver.py, or use --source naver-api / naver-browser",
                kind="changed" if exc.kind == "http" else exc.kind,
            ) from exc
        # The endpoint's own `url` leads on; an empty page here is a real "no results".
        return Page(page.items, page.next_url if page.items else "", page.percent_encoded)

    async def _xhr_page(self, http: HttpClient, url: str, query: str) -> Page:
        reply = await http.get(url, headers=self._xhr_headers())
        if reply.status != 200:
            problem = page_problem(reply.body, reply.status)
            if problem is not None:
                raise self._page_error(problem, query, reply)
            raise self._http_error(reply, "the XHR endpoint")
        try:
            return parse_xhr_body(reply.body)
        except BadAnswer as exc:
            raise SourceError(self.name, str(exc), kind="bad_answer") from exc

    def _xhr_headers(self) -> dict[str, str]:
        origin = urlsplit(self.settings.naver_search_url)
        return {"Accept": "*/*", "Referer": f"{origin.scheme}://{origin.netloc}/"}

    def _xhr_url(self, query: str, start: int) -> str:
        params = {
            "query": query, "nx_search_query": query, "where": "image", "section": "image",
            "mode": "column", "api_type": "pc_tab_more", "ssc": "tab.image.all", "sm": "tab_opt",
            "start": str(start), "display": str(XHR_PAGE_SIZE),
        }
        return f"{self.settings.naver_xhr_url}?{urlencode(params)}"

    def _next_url(self, given: str | None) -> str:
        """Follow the answer's `url` only to Naver's own hosts (an answer must not send us elsewhere)."""
        if not given:
            return ""
        url = urljoin(self.settings.naver_xhr_url, unquote_url_field(given))
        allowed = {urlsplit(self.settings.naver_xhr_url).netloc, urlsplit(self.settings.naver_search_url).netloc}
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.netloc not in allowed:
            log.warning("naver: ignoring a next-page URL on an unexpected host: %s", parts.netloc)
            return ""
        return url

    def _page_error(self, problem: str, query: str, reply: Reply) -> SourceError:
        if problem == "adult":
            return SourceError(
                self.name,
                f"Naver hides the results for {query!r} from logged-out visitors (adult filter); "
                "no source here logs in, so use another query or give image URLs with --urls",
                kind="adult",
            )
        if problem == "empty":
            return empty_result(self.name, query)
        return SourceError(
            self.name,
            f"Naver answered with a block or captcha page (HTTP {reply.status}): it takes this machine "
            "for a bot. Wait a while before trying again, raise naver_page_delay_s, or use the Open API "
            "(set CVDB_NAVER_CLIENT_ID and CVDB_NAVER_CLIENT_SECRET)",
            kind="blocked",
        )

    def _http_error(self, reply: Reply, what: str) -> SourceError:
        if reply.status == 429:
            return SourceError(
                self.name,
                f"{what} keeps answering 429 Too Many Requests; wait a few minutes and raise naver_page_delay_s",
                kind="rate_limited",
            )
        hint = "check naver_search_url / naver_xhr_url" if reply.status == 404 else "try again later"
        return SourceError(self.name, f"{what} answered HTTP {reply.status} ({reply.url}); {hint}", kind="http")
