"""A fake Naver image search on 127.0.0.1, so every source can be tested with no network.

It serves, from one aiohttp app on an ephemeral port in a background thread:

- `/search.naver`: the results page, with the `imageSearchTabData` object embedded (the 2026
  spelling `var imageSearchTabData = {...};` or the 2024 one `var imageSearchTabData={...}`) and
  the same results as DOM tiles; inline JS lazy-loads more tiles from the XHR endpoint on scroll,
  so real headless Chromium can drive it.
- `/p/c/image/search.naver`, `/p/c/image/46/search.naver`: XHR pages `{"url": next, "items": [...]}`,
  as JSONP with `_callback=`, as the legacy bare `({...})` with `json_type=6`.
- `/v1/search/image`: the Open API, with its header checks, paging limits and error codes.
- `/common/?src=`, `/sunny/?src=`: thumbnails; `/post/{n}`: a source page; `/img/{name}`: originals.

Results are the same for every query: the image originals in order, plus one ad, one item of
size 0 and one repeat of the first image, which sources must skip. `expected_urls()` is what a
correct source returns. Behaviour is chosen per instance (`mode=`) or per query (`modes=`):

- normal; empty (no results); adult (results withheld, `div.dsc_adult`);
- blocked: captcha page with HTTP 403 from the page and XHR (the Open API is unaffected);
- ratelimit: the first `ratelimit_count` page/XHR requests get 429 + Retry-After, then OK
  (for the Open API, 429 "quota exceeded" every time);
- changed: the page has tiles but no embedded object (forces the fallbacks);
- bad_html / bad_truncated / bad_types: HTML where JSON is expected, JSON cut in half, wrong
  types; for the page's object, the XHR pages and the Open API alike;
- bad_xhr: the page is fine, every XHR page is HTML; huge: 11 MiB answers;
- stall: the page answers its headers, then a byte a second for ten minutes (a search that hangs);
- se99 / api_forbidden: the Open API answers 500 SE99 / 403.

Everything is synthetic; field and class names follow the real site.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import io
import json
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np
from aiohttp import web
from PIL import Image

MODES = (
    "normal", "empty", "blocked", "ratelimit", "changed", "bad_html", "bad_truncated",
    "bad_types", "bad_xhr", "adult", "huge", "se99", "api_forbidden", "stall",
)
XHR_STYLES = ("json", "jsonp", "wrapped", "legacy")
MARKERS = ("2026", "2024")
CLIENT_ID = "fake-client-id"
CLIENT_SECRET = "fake-client-secret"
PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAAAAACw="
EUC_KR_NAME = "0042_%B0%ED%BE%E7%C0%CC.jpg"  # "고양이" in EUC-KR: must reach us undecoded


@dataclass(frozen=True)
class FakeItem:
    """One result entry, in the shape of Naver's `content.items[]`."""

    position: int
    kind: str  # image | shopAd
    img_id: str
    title: str
    link: str
    original: str
    width: int
    height: int
    thumb: str

    def to_json(self) -> dict[str, Any]:
        if self.kind != "image":
            return {"type": self.kind, "title": self.title, "link": self.link}
        return {
            "type": "image", "imgId": self.img_id, "title": self.title, "link": self.link,
            "source": "네이버 블로그", "originalUrl": self.original, "orgWidth": self.width,
            "orgHeight": self.height, "thumb": self.thumb, "thumbWidth": 340, "thumbHeight": 255,
            "viewerThumb": self.thumb.replace("type=a340", "type=sc960_832"),
            "writerTitle": "고양이 일기", "tld": "blog.naver.com", "dateInfo": "2025.07.18.",
        }

    def to_api_json(self) -> dict[str, str]:
        return {
            "title": self.title.replace("mark>", "b>"), "link": self.original,
            "thumbnail": self.thumb, "sizeheight": str(self.height), "sizewidth": str(self.width),
        }


@dataclass(frozen=True)
class Hit:
    """One request the fake answered, for tests that check what a source sent."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]


class FakeNaver:
    """Start with `with FakeNaver() as fake:`; point settings at it with `fake.settings_overrides()`."""

    def __init__(
        self,
        image_urls: Sequence[str] | None = None,
        *,
        count: int = 120,
        mode: str = "normal",
        modes: dict[str, str] | None = None,
        marker: str = "2026",
        xhr_style: str = "json",
        page_size: int = 50,
        retry_after: str = "1",
        ratelimit_count: int = 1,
        api_quota: int | None = None,
    ) -> None:
        choices = [(mode, MODES), (marker, MARKERS), (xhr_style, XHR_STYLES)]
        for value, allowed in [*choices, *((m, MODES) for m in (modes or {}).values())]:
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {allowed}")
        if (image_urls is not None and not image_urls) or count < 1:
            raise ValueError("the fake needs at least one image")
        self.image_urls = list(image_urls) if image_urls is not None else None
        self.count = len(self.image_urls) if self.image_urls is not None else count
        self.mode, self.modes = mode, dict(modes or {})
        self.marker, self.xhr_style, self.page_size = marker, xhr_style, page_size
        self.retry_after, self.ratelimit_count, self.api_quota = retry_after, ratelimit_count, api_quota
        self.client_id, self.client_secret = CLIENT_ID, CLIENT_SECRET
        self.hits: list[Hit] = []
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._items: list[FakeItem] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._closing = threading.Event()

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("the fake Naver is not running; use it as a context manager")
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeNaver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._closing.clear()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as exc:  # reported to start() below
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-naver", daemon=True)
        self._thread.start()
        if not started.wait(timeout=30):
            raise RuntimeError("the fake Naver did not start within 30 s")
        if failure:
            raise RuntimeError("the fake Naver could not start") from failure[0]

    async def _start_site(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._items = None  # a restart gets a new port, and every URL names it

    def stop(self) -> None:
        self._closing.set()  # hung answers end, so the server's cleanup does not wait for them
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop = self._thread = None  # items stay readable, for checks after the server stopped

    def settings_overrides(self) -> dict[str, object]:
        """Settings fields that point every Naver source here (and skip the polite delay)."""
        return {
            "naver_search_url": f"{self.base_url}/search.naver",
            "naver_xhr_url": f"{self.base_url}/p/c/image/search.naver",
            "naver_api_url": f"{self.base_url}/v1/search/image",
            "naver_client_id": self.client_id,
            "naver_client_secret": self.client_secret,
            "naver_page_delay_s": 0.0,
        }

    # --- the dataset --------------------------------------------------------------------------

    def items(self) -> list[FakeItem]:
        """Every entry in result order: images plus the ad, the size-0 item and the repeat."""
        if self._items is None:
            self._items = self._build_items()
        return self._items

    def image_items(self) -> list[FakeItem]:
        """The entries a correct source keeps, in order."""
        seen: set[str] = set()
        kept = []
        for item in self.items():
            if item.kind == "image" and item.width and item.original not in seen:
                seen.add(item.original)
                kept.append(item)
        return kept

    def expected_urls(self) -> list[str]:
        return [item.original for item in self.image_items()]

    def _build_items(self) -> list[FakeItem]:
        originals = self.image_urls or [self._own_original(n) for n in range(1, self.count + 1)]
        entries: list[tuple[str, str, int]] = [("image", url, n) for n, url in enumerate(originals, 1)]
        # The things a source must skip, placed early so the first page always has them.
        entries.insert(min(2, len(entries)), ("shopAd", "", 0))
        entries.insert(min(4, len(entries)), ("image", f"{self.base_url}/img/zero-size.jpg", -1))
        entries.insert(min(6, len(entries)), ("image", originals[0], 1))
        return [self._item(pos, kind, url, n) for pos, (kind, url, n) in enumerate(entries, 1)]

    def _own_original(self, n: int) -> str:
        name = EUC_KR_NAME if n == 42 else f"{n:04d}.jpg"
        return f"{self.base_url}/img/{name}"

    def _item(self, position: int, kind: str, original: str, n: int) -> FakeItem:
        base = self.base_url
        if kind != "image":
            return FakeItem(position, kind, "", "광고", f"{base}/post/ad", "", 0, 0, "")
        width, height = (0, 0) if n < 0 else (640 + (n % 5) * 80, 480 + (n % 3) * 60)
        host = "sunny" if n % 7 == 0 else "common"
        thumb = f"{base}/{host}/?src={quote(original, safe='')}&type=a340"
        return FakeItem(
            position, "image", f"image_sas:blog_{position:032x}", f"귀여운 <mark>고양이</mark> 사진 {position}",
            f"{base}/post/{position}", original, width, height, thumb,
        )

    # --- request bookkeeping ------------------------------------------------------------------

    def mode_for(self, query: str) -> str:
        return self.modes.get(query, self.mode)

    def _record(self, request: web.Request) -> None:
        hit = Hit(request.path, dict(request.query), dict(request.headers))
        with self._lock:
            self.hits.append(hit)

    def _rate_limited(self, route: str, query: str) -> bool:
        """True for the first `ratelimit_count` requests of a route in ratelimit mode."""
        if self.mode_for(query) != "ratelimit":
            return False
        with self._lock:
            self._counts[(route, query)] += 1
            return self._counts[(route, query)] <= self.ratelimit_count

    def _too_many(self) -> web.Response:
        return web.Response(status=429, text="Too Many Requests", headers={"Retry-After": self.retry_after})

    # --- the app ------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/search.naver", self._search_page)
        app.router.add_get("/p/c/image/search.naver", self._xhr)
        app.router.add_get("/p/c/image/46/search.naver", self._xhr)
        app.router.add_get("/v1/search/{api}", self._api)
        app.router.add_get("/common/", self._thumbnail)
        app.router.add_get("/sunny/", self._thumbnail)
        app.router.add_get("/post/{id}", self._post)
        app.router.add_get("/img/{name}", self._image)
        return app

    async def _search_page(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        query = request.query.get("query", "")
        mode = self.mode_for(query)
        if self._rate_limited("page", query):
            return self._too_many()
        if mode == "blocked":
            return web.Response(status=403, text=captcha_page(), content_type="text/html")
        if mode == "huge":
            return await huge_body(request, "text/html")
        if mode == "stall":
            return await self._trickle(request)
        return web.Response(text=self._page_html(query, mode), content_type="text/html")

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        """Headers at once, then a space a second: no read timeout fires, only a total one."""
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        await response.prepare(request)
        try:
            for _ in range(600):
                if self._closing.is_set():
                    break
                await response.write(b" ")
                await asyncio.sleep(1)
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away
        return response

    def _page_html(self, query: str, mode: str) -> str:
        shown = [] if mode in ("empty", "adult") else self.items()[: self.page_size]
        more = len(self.items()) > self.page_size and bool(shown)
        next_url = self._xhr_link(query, self.page_size + 1, self.page_size) if more else ""
        notice = {"empty": NOT_FOUND_HTML, "adult": ADULT_HTML}.get(mode, "")
        data = "" if mode in ("changed", "bad_html", "adult") else self._embedded(shown, next_url, mode)
        tiles = "\n".join(tile_html(item, lazy=n >= 20) for n, item in enumerate(shown))
        return PAGE_HTML.format(
            title=html.escape(query), notice=notice, tiles=tiles, next=html.escape(next_url),
            data=data, js=LAZY_JS.replace("__PLACEHOLDER__", PLACEHOLDER),
        )

    def _embedded(self, shown: list[FakeItem], next_url: str, mode: str) -> str:
        """The page's data object as a JS literal: bare top-level keys, a trailing comma, `<\\/`."""
        items = json.dumps([item.to_json() for item in shown], ensure_ascii=False).replace("</", "<\\/")
        literal = f"{{shopAd:{{items:null}},content:{{url:{json.dumps(next_url)},items:{items},}}}}"
        if mode == "bad_truncated":
            literal = literal[: len(literal) // 2]
        if mode == "bad_types":
            literal = '{shopAd:{items:null},content:{url:5,items:"no items here"}}'
        if self.marker == "2024":
            return f"<script>var imageSearchTabData={literal}</script>"
        return f'<script type="text/javascript">\n  var imageSearchTabData = {literal};\n</script>'

    def _xhr_link(self, query: str, start: int, display: int) -> str:
        params = {"query": query, "start": str(start), "display": str(display), "where": "image", "section": "image"}
        return f"{self.base_url}/p/c/image/46/search.naver?{urlencode(params)}"

    async def _xhr(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        query = request.query.get("query", "")
        mode = self.mode_for(query)
        if self._rate_limited("xhr", query):
            return self._too_many()
        if mode == "blocked":
            return web.Response(status=403, text=captcha_page(), content_type="text/html")
        if mode == "huge":
            return await huge_body(request, "application/json")
        if mode in ("bad_html", "bad_xhr"):
            return web.Response(text="<!doctype html><html><body>점검 중</body></html>", content_type="text/html")
        payload = self._xhr_payload(request, query, mode)
        return web.Response(text=self._xhr_text(request, payload, mode), content_type="application/json")

    def _xhr_payload(self, request: web.Request, query: str, mode: str) -> dict[str, Any]:
        if mode in ("empty", "adult"):
            return {}
        if mode == "bad_types":
            return {"url": 7, "items": "no items here"}
        start = _int_param(request, "start", 1)
        display = max(1, min(_int_param(request, "display", 100), 100))
        chunk = self.items()[start - 1 : start - 1 + display]
        following = start + display
        next_url = self._xhr_link(query, following, display) if following <= len(self.items()) else ""
        return {"url": next_url, "itemCount": len(chunk), "items": [item.to_json() for item in chunk]}

    def _xhr_text(self, request: web.Request, payload: dict[str, Any], mode: str) -> str:
        style = self.xhr_style
        if request.query.get("json_type") == "6":
            style = "legacy"
        elif request.query.get("_callback"):
            style = "jsonp"
        if style == "legacy":  # the old form: every string percent-encoded, wrapped in bare ( )
            text = "(" + json.dumps(_percent_encode(payload), ensure_ascii=False) + ")"
        elif style == "jsonp":
            text = f"{request.query.get('_callback', 'getPhoto')}({json.dumps(payload, ensure_ascii=False)});"
        elif style == "wrapped":
            text = json.dumps({"content": payload}, ensure_ascii=False)
        else:
            text = json.dumps(payload, ensure_ascii=False)
        return text[: len(text) // 2] if mode == "bad_truncated" else text

    async def _api(self, request: web.Request) -> web.Response:
        self._record(request)
        query = request.query.get("query", "")
        problem = self._api_problem(request, query)
        if problem is not None:
            return problem
        mode = self.mode_for(query)
        if mode == "bad_html":
            return web.Response(text="<html><body>error</body></html>", content_type="text/html")
        if mode == "bad_truncated":
            return web.Response(text='{"total": 150, "items": [{"title": "', content_type="application/json")
        if mode == "bad_types":
            return web.json_response({"total": 150, "items": {"title": "x"}})
        pool = [] if mode in ("empty", "adult") else [i for i in self.items() if i.kind == "image"]
        start, display = int(request.query.get("start", "1")), int(request.query.get("display", "10"))
        items = [item.to_api_json() for item in pool[start - 1 : start - 1 + display]]
        return web.json_response({
            "lastBuildDate": "Mon, 26 Sep 2016 10:58:23 +0900", "total": len(pool),
            "start": start, "display": len(items), "items": items,
        })

    def _api_problem(self, request: web.Request, query: str) -> web.Response | None:
        """The Open API's checks, in the order Naver documents them; None when the call is fine."""
        if request.match_info["api"] not in ("image", "image.json"):
            return api_error(404, "SE05", "Invalid search api (없는 검색 API 입니다.)")
        sent = (request.headers.get("X-Naver-Client-Id"), request.headers.get("X-Naver-Client-Secret"))
        if sent != (self.client_id, self.client_secret):
            return api_error(401, "024", "Authentication failed (인증에 실패하였습니다.)")
        mode = self.mode_for(query)
        if mode == "api_forbidden":
            return api_error(403, "024", "Scope Status Invalid : Authentication failed. (권한이 없습니다.)")
        with self._lock:
            self._counts[("api", "")] += 1
            over_quota = self.api_quota is not None and self._counts[("api", "")] > self.api_quota
        if over_quota or mode == "ratelimit":
            return api_error(429, "010", "Query limit exceeded")
        if mode == "se99":
            return api_error(500, "SE99", "System Error (시스템 에러)")
        return _api_param_problem(request)

    async def _thumbnail(self, request: web.Request) -> web.Response:
        self._record(request)
        if not request.query.get("src"):
            return web.Response(status=404, text="no src")
        body = await asyncio.to_thread(jpeg, request.query["src"], 120, 90)  # keep the loop serving
        return web.Response(body=body, content_type="image/jpeg")

    async def _post(self, request: web.Request) -> web.Response:
        self._record(request)
        number = html.escape(request.match_info["id"])
        body = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>post {number}</title></head>"
            f"<body><p>고양이 일기 {number}</p></body></html>"
        )
        return web.Response(text=body, content_type="text/html")

    async def _image(self, request: web.Request) -> web.Response:
        self._record(request)
        if request.match_info["name"] == "zero-size.jpg":  # listed with size 0: a dead link
            return web.Response(status=404, text="gone")
        # The raw (still percent-encoded) name: the EUC-KR one must match byte for byte.
        raw_name = request.raw_path.split("?", 1)[0].rsplit("/", 1)[-1]
        sizes = {item.original.rsplit("/", 1)[-1]: (item.width, item.height) for item in self.items()}
        width, height = sizes.get(raw_name, (640, 480))
        body = await asyncio.to_thread(jpeg, raw_name, width, height)
        return web.Response(body=body, content_type="image/jpeg")


# --- helpers: responses ---------------------------------------------------------------------------

def api_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"errorMessage": message, "errorCode": code}, status=status)


def _api_param_problem(request: web.Request) -> web.Response | None:
    query = request.query
    if not query.get("query"):
        return api_error(400, "SE01", "Incorrect query request (잘못된 쿼리요청입니다.)")
    if not query.get("display", "10").isdigit() or not 1 <= int(query.get("display", "10")) <= 100:
        return api_error(400, "SE02", "Invalid display value (부적절한 display 값입니다.)")
    if not query.get("start", "1").isdigit() or not 1 <= int(query.get("start", "1")) <= 1000:
        return api_error(400, "SE03", "Invalid start value (부적절한 start 값입니다.)")
    if query.get("sort", "sim") not in ("sim", "date"):
        return api_error(400, "SE04", "Invalid sort value (부적절한 sort 값입니다.)")
    return None


def _int_param(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


def _percent_encode(value: Any) -> Any:
    if isinstance(value, str):
        return quote(value, safe="")
    if isinstance(value, list):
        return [_percent_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _percent_encode(v) for k, v in value.items()}
    return value


async def huge_body(request: web.Request, content_type: str) -> web.StreamResponse:
    """11 MiB, chunked and without Content-Length, so only a streaming byte cap stops it."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = b" " * (1024 * 1024)
    try:
        for _ in range(11):
            await response.write(chunk)
    except (ConnectionResetError, RuntimeError):
        pass  # the client stopped reading, as it should
    return response


def captcha_page() -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>보안 확인</title>"
        "<script src='/wtm_captcha.js'></script></head><body><div class='captcha_container'>"
        "<p>보안 확인을 완료해 주세요 (security verification)</p></div></body></html>"
    )


@lru_cache(maxsize=256)
def jpeg(name: str, width: int, height: int) -> bytes:
    """A deterministic, textured picture per name: distinct, sharp and busy enough for quality checks."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    width, height = max(1, min(width, 2000)), max(1, min(height, 2000))
    small = rng.integers(0, 256, (max(1, height // 40), max(1, width // 40), 3), dtype=np.uint8)
    blocks = np.kron(small, np.ones((40, 40, 1), dtype=np.uint8))
    canvas = np.zeros((height, width, 3), dtype=np.int16)
    canvas[: blocks.shape[0], : blocks.shape[1]] = blocks[:height, :width]
    noisy = np.clip(canvas + rng.normal(0, 20, canvas.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy, "RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def tile_html(item: FakeItem, lazy: bool) -> str:
    """One DOM tile like Naver's grid: real src for the first rows, data-src placeholders after."""
    alt = html.escape(_plain(item.title))
    thumb = html.escape(item.thumb)
    source = f'src="{PLACEHOLDER}" data-src="{thumb}"' if lazy else f'src="{thumb}"'
    return (
        f'<div class="tile_item _fe_image_tab_content_tile" data-type="{item.kind}">'
        f'<div class="thumb"><a class="link_thumb" href="{html.escape(item.link)}">'
        f'<img {source} class="_fe_image_tab_content_thumbnail_image" alt="{alt}" '
        f'data-image-viewer-trigger="" data-image-viewer-img-id="{item.img_id}" '
        f'data-org-width="{item.width}" data-org-height="{item.height}"></a></div>'
        f'<div class="title">{alt}</div></div>'
    )


def _plain(title: str) -> str:
    return title.replace("<mark>", "").replace("</mark>", "")


NOT_FOUND_HTML = '<div class="not_found02"><p>검색결과가 없습니다.</p></div>'
ADULT_HTML = '<div class="dsc_adult"><p>청소년에게 노출하기 부적합한 검색결과를 제외하였습니다.</p></div>'

PAGE_HTML = """<!doctype html>
<html lang="ko"><head><meta charset="utf-8"><title>{title} : 네이버 이미지검색</title>
<style>
 .image_tile {{ display: flex; flex-wrap: wrap; width: 1000px; }}
 .tile_item {{ width: 190px; height: 250px; margin: 4px; overflow: hidden; }}
 .tile_item img {{ width: 180px; height: 180px; display: block; background: #ddd; }}
</style></head>
<body class="tabsch tabsch_image">
<div id="main_pack" class="main_pack">
 {notice}
 <section class="sc_new sp_nimage _fe_image_viewer_prepend_target _fe_image_tab_content_root">
  <div class="api_subject_bx _fe_image_tab_grid_root"><div><div>
   <div class="image_tile _fe_image_tab_grid" id="grid" data-next-url="{next}">
{tiles}
   </div>
  </div></div></div>
 </section>
</div>
{data}
<script>{js}</script>
</body></html>
"""

# Inline only (the page must work offline): reveal lazy thumbnails near the viewport, and when
# the reader nears the bottom, fetch the next XHR page and append its tiles, as Naver does.
LAZY_JS = """
(function () {
  var grid = document.getElementById('grid');
  var next = grid.getAttribute('data-next-url') || '';
  var loading = false;
  function esc(s) {
    return String(s == null ? '' : s).replace(/[&<>"']/g, function (c) { return '&#' + c.charCodeAt(0) + ';'; });
  }
  function plain(s) { return String(s || '').replace(/<[^>]*>/g, ''); }
  function tile(it) {
    var div = document.createElement('div');
    div.className = 'tile_item _fe_image_tab_content_tile';
    div.setAttribute('data-type', it.type || 'image');
    div.innerHTML = '<div class="thumb"><a class="link_thumb" href="' + esc(it.link) + '">' +
      '<img src="__PLACEHOLDER__" data-src="' + esc(it.thumb) + '" class="_fe_image_tab_content_thumbnail_image"' +
      ' alt="' + esc(plain(it.title)) + '" data-image-viewer-trigger=""' +
      ' data-image-viewer-img-id="' + esc(it.imgId) + '"' +
      ' data-org-width="' + esc(it.orgWidth) + '" data-org-height="' + esc(it.orgHeight) + '"></a></div>' +
      '<div class="title">' + esc(plain(it.title)) + '</div>';
    return div;
  }
  function reveal() {
    var imgs = grid.querySelectorAll('img[data-src]');
    for (var i = 0; i < imgs.length; i++) {
      if (imgs[i].getBoundingClientRect().top < window.innerHeight * 2) {
        imgs[i].src = imgs[i].getAttribute('data-src');
        imgs[i].removeAttribute('data-src');
      }
    }
  }
  function parse(text) {
    text = text.trim();
    if (text.charAt(0) !== '{') { text = text.slice(text.indexOf('(') + 1, text.lastIndexOf(')')); }
    var d = JSON.parse(text);
    return d.content || d;
  }
  function load() {
    if (loading || !next) { return; }
    if (window.innerHeight + window.scrollY < document.documentElement.scrollHeight - 600) { return; }
    loading = true;
    fetch(next).then(function (r) { return r.text(); }).then(function (text) {
      var d = parse(text);
      var data = window.imageSearchTabData;
      (d.items || []).forEach(function (it) {
        grid.appendChild(tile(it));
        if (data && data.content && data.content.items) { data.content.items.push(it); }
      });
      next = d.url || '';
      grid.setAttribute('data-next-url', next);
      loading = false;
      reveal();
    }).catch(function () { next = ''; loading = false; });
  }
  window.addEventListener('scroll', function () { reveal(); load(); }, { passive: true });
  reveal();
})();
"""
