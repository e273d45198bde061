"""The `naver-api` source: Naver's official Search Open API for images.

`GET /v1/search/image?query=&display=&start=&sort=sim` with the headers `X-Naver-Client-Id` and
`X-Naver-Client-Secret`. At most 100 results per call and `start` at most 1000, so one query
reaches at most ranks 1..1099; 25,000 calls per day per Client ID (HTTP 429 beyond that).
Items carry only title, link (the image itself), thumbnail and size strings; no source page.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from common.pipeline.records import Candidate
from common.pipeline.sources.base import (
    RETRY_STATUSES,
    HttpClient,
    Reply,
    Sleep,
    SourceError,
    empty_result,
    finalize,
    require_query,
    run_sync,
    strip_html,
    to_int,
    url_field,
)

if TYPE_CHECKING:
    from common.config import Settings

log = logging.getLogger(__name__)

NAME = "naver-api"
DISPLAY_MAX = 100
START_MAX = 1000
MAX_RESULTS = START_MAX + DISPLAY_MAX - 1
CREDENTIAL_VARS = "CVDB_NAVER_CLIENT_ID and CVDB_NAVER_CLIENT_SECRET"

# Documented error codes (developers.naver.com, search/image): what they mean for the user.
API_ERRORS = {
    "SE01": "Naver rejected the request as malformed (SE01 Incorrect query request); check the query text",
    "SE02": "display must be between 1 and 100 (SE02 Invalid display value)",
    "SE03": "start must be between 1 and 1000 (SE03 Invalid start value)",
    "SE04": "sort must be sim or date (SE04 Invalid sort value)",
    "SE05": "no such API (SE05 Invalid search api); check naver_api_url, it should end in /v1/search/image",
    "SE06": "the query is not valid UTF-8 (SE06 Malformed encoding)",
    "SE99": "Naver's search API failed internally (SE99 System Error); try again later",
}


def has_credentials(settings: Settings) -> bool:
    return bool(settings.naver_client_id) and bool(settings.naver_client_secret)


def candidate_from_api_item(item: object, rank: int = 0) -> Candidate | None:
    """One Open API item -> Candidate; None for items without an image URL or with size 0."""
    if not isinstance(item, Mapping):
        return None
    url = url_field(item, "link")
    width, height = to_int(item.get("sizewidth")), to_int(item.get("sizeheight"))
    if url is None or width == 0 or height == 0:
        return None
    return Candidate(
        url=url,
        thumbnail_url=url_field(item, "thumbnail"),
        title=strip_html(item.get("title")),
        width=width,
        height=height,
        source=NAME,
        rank=rank,
    )


def api_error(reply: Reply) -> SourceError:
    """Turn a non-200 answer into a message that says what to do."""
    code, message = _error_body(reply.body)
    if reply.status == 401:
        text = (
            f"Naver rejected the Client ID or secret (HTTP 401{_code(code)}); check {CREDENTIAL_VARS} "
            "against your application at https://developers.naver.com/apps"
        )
        return SourceError(NAME, text, kind="credentials")
    if reply.status == 403:
        text = (
            f"this application may not use the Search API (HTTP 403{_code(code)}); add 'Search' (검색) "
            "to its APIs at https://developers.naver.com/apps, and make sure naver_api_url uses https"
        )
        return SourceError(NAME, text, kind="credentials")
    if reply.status == 429:
        text = (
            f"the daily quota of the Open API is used up (HTTP 429{_code(code)}; 25,000 calls per day "
            "per Client ID); try again tomorrow or use --source naver"
        )
        return SourceError(NAME, text, kind="quota")
    if code in API_ERRORS:
        return SourceError(NAME, f"{API_ERRORS[code]} (HTTP {reply.status})", kind="api_error")
    detail = f": {message}" if message else ""
    return SourceError(NAME, f"the Open API answered HTTP {reply.status}{_code(code)}{detail}", kind="http")


def _error_body(body: str) -> tuple[str | None, str | None]:
    try:
        data = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    code, message = data.get("errorCode"), data.get("errorMessage")
    return (code if isinstance(code, str) else None), (message if isinstance(message, str) else None)


def _code(code: str | None) -> str:
    return f", errorCode {code}" if code else ""


def parse_api_body(body: str) -> tuple[list[Any], int | None]:
    """(items, total) from a successful answer; SourceError when it is not the documented shape."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        what = "an HTML page" if body.lstrip().startswith("<") else "invalid JSON"
        raise SourceError(NAME, f"the Open API answered with {what} instead of JSON", kind="bad_answer") from exc
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise SourceError(NAME, "the Open API answer has no list of items; its format changed", kind="bad_answer")
    return items, to_int(data.get("total"))


class NaverApiSource:
    """Naver image search through the official, credentialed Open API."""

    name = NAME

    def __init__(self, settings: Settings, *, sleep: Sleep | None = None) -> None:
        self.settings = settings
        self.sleep = sleep

    def search(self, query: str, limit: int) -> list[Candidate]:
        query = require_query(self.name, query, limit)
        if not has_credentials(self.settings):
            raise SourceError(
                self.name,
                f"the Naver Open API needs credentials: set {CREDENTIAL_VARS} (register an application "
                "with the Search API at https://developers.naver.com/apps)",
                kind="credentials",
            )
        return run_sync(self._search(query, min(limit, MAX_RESULTS)))

    async def _search(self, query: str, limit: int) -> list[Candidate]:
        found: list[Candidate] = []
        start = 1
        # Quota errors are daily: retrying a 429 would only spend more of it.
        retry = RETRY_STATUSES - {429}
        async with HttpClient(self.name, self.settings, sleep=self.sleep, retry_statuses=retry) as http:
            while (have := len({c.url for c in found})) < limit:
                display = min(DISPLAY_MAX, limit - have)
                try:
                    items, total = await self._page(http, query, start, display)
                except SourceError as exc:
                    if not found:
                        raise
                    log.warning("naver-api: stopped after %d candidates: %s", len(found), exc.message)
                    break
                found.extend(c for c in map(candidate_from_api_item, items) if c is not None)
                if len(items) < display or start >= START_MAX or (total is not None and start + display > total):
                    break
                # `start` may not pass 1000; the last page overlaps and repeats are dropped later.
                start = min(start + display, START_MAX)
        if not found:
            raise empty_result(self.name, query)
        return finalize(found, limit)

    async def _page(self, http: HttpClient, query: str, start: int, display: int) -> tuple[list[Any], int | None]:
        headers = {
            "X-Naver-Client-Id": self.settings.naver_client_id or "",
            "X-Naver-Client-Secret": self.settings.naver_client_secret or "",
            "Accept": "application/json",
        }
        params = {"query": query, "display": str(display), "start": str(start), "sort": "sim"}
        reply = await http.get(self.settings.naver_api_url, params=params, headers=headers)
        if reply.status != 200:
            raise api_error(reply)
        return parse_api_body(reply.body)
