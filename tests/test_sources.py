"""Image sources against the offline fake Naver: urls, naver (HTTP), naver-api, auto fallback, bad answers."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from common.config import Settings
from common.devkit.fake_naver import FakeNaver
from common.pipeline.records import Candidate
from common.pipeline.retry_after import retry_after_s
from common.pipeline.sources import SOURCES, SearchResult, search
from common.pipeline.sources.base import (
    Reply,
    SourceError,
    candidate_from_item,
    original_from_thumbnail,
)
from common.pipeline.sources.naver import (
    NaverSource,
    extract_embedded,
    js_literal_to_json,
    parse_xhr_body,
)
from common.pipeline.sources.naver_api import API_ERRORS, NaverApiSource, api_error
from common.pipeline.sources.urls import UrlsSource

QUERY = "고양이"


class Sleeps:
    """Stands in for asyncio.sleep: records what a source wanted to wait, without waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def fake() -> Iterator[FakeNaver]:
    with FakeNaver() as server:
        yield server


def settings_for(fake: FakeNaver, **extra: Any) -> Settings:
    return Settings(**{**fake.settings_overrides(), "retry_backoff_s": 0.0, **extra})


def urls_of(candidates: list[Candidate]) -> list[str]:
    return [c.url for c in candidates]


def assert_exactly_images(candidates: list[Candidate], fake: FakeNaver, source: str) -> None:
    """The image items, in order, ranked 1..n; not the ad, the size-0 item or the repeat."""
    assert urls_of(candidates) == fake.expected_urls()
    assert [c.rank for c in candidates] == list(range(1, len(candidates) + 1))
    assert {c.source for c in candidates} == {source}
    assert f"{fake.base_url}/img/zero-size.jpg" not in urls_of(candidates)
    assert all(c.width and c.height for c in candidates)


# --- urls ---------------------------------------------------------------------------------------

def test_urls_file_keeps_order_and_skips_comments(tmp_path: Any) -> None:
    listing = tmp_path / "urls.txt"
    lines = ["# my cats", "", "  https://a.example/1.jpg  ", "http://b.example/2.png", "#https://c.example/x.jpg"]
    listing.write_text("\n".join([*lines, "https://a.example/1.jpg", ""]))
    found = UrlsSource(str(listing)).search("ignored", 10)
    assert urls_of(found) == ["https://a.example/1.jpg", "http://b.example/2.png"]
    assert [(c.rank, c.source) for c in found] == [(1, "urls"), (2, "urls")]
    assert urls_of(UrlsSource(str(listing)).search("ignored", 1)) == ["https://a.example/1.jpg"]


def test_urls_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    given = UrlsSource("-", stdin=io.StringIO("https://x.example/a.jpg\n")).search("q", 5)
    assert urls_of(given) == ["https://x.example/a.jpg"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\nhttps://y.example/b.jpg\n"))
    result = search("q", 5, Settings(), urls_file="-")
    assert result.served_by == "urls" and urls_of(result.candidates) == ["https://y.example/b.jpg"]


def test_urls_errors_are_clear(tmp_path: Any) -> None:
    with pytest.raises(SourceError, match="does not exist") as missing:
        UrlsSource(str(tmp_path / "nope.txt")).search("q", 5)
    assert missing.value.source == "urls"
    only_comments = tmp_path / "empty.txt"
    only_comments.write_text("# nothing yet\n\n")
    with pytest.raises(SourceError, match="contains no URLs"):
        UrlsSource(str(only_comments)).search("q", 5)
    typo = tmp_path / "typo.txt"
    typo.write_text("https://ok.example/a.jpg\nwww.example.com/b.jpg\n")
    with pytest.raises(SourceError, match="line 2"):
        UrlsSource(str(typo)).search("q", 5)


# --- naver (HTTP) -------------------------------------------------------------------------------

@pytest.mark.parametrize("marker", ["2026", "2024"])
@pytest.mark.parametrize("style", ["json", "jsonp", "wrapped", "legacy"])
def test_naver_returns_exactly_the_images(marker: str, style: str) -> None:
    with FakeNaver(marker=marker, xhr_style=style) as fake:
        found = NaverSource(settings_for(fake)).search(QUERY, 1000)
        assert_exactly_images(found, fake, "naver")
        first, item = found[0], fake.image_items()[0]
        assert first.title == "귀여운 고양이 사진 1"  # <mark> highlighting stripped
        assert (first.width, first.height) == (item.width, item.height)
        assert (first.source_page, first.thumbnail_url) == (item.link, item.thumb)
        # An EUC-KR escape in the original survives: the thumbnail's src= is decoded exactly once.
        assert f"{fake.base_url}/img/0042_%B0%ED%BE%E7%C0%CC.jpg" in urls_of(found)


def test_naver_is_polite(fake: FakeNaver) -> None:
    sleeps = Sleeps()
    settings = settings_for(fake, naver_page_delay_s=0.75)
    NaverSource(settings, sleep=sleeps).search(QUERY, 1000)
    xhr = [h for h in fake.hits if "/p/c/image/" in h.path]
    assert len(xhr) == 2 and sleeps.calls == [0.75, 0.75]  # a delay before each further page
    assert {h.headers["User-Agent"] for h in fake.hits} == {settings.user_agent}
    assert all(h.headers["Referer"] == f"{fake.base_url}/" for h in xhr)


def test_naver_stops_at_the_limit(fake: FakeNaver) -> None:
    found = NaverSource(settings_for(fake)).search(QUERY, 30)
    assert urls_of(found) == fake.expected_urls()[:30]
    assert [h.path for h in fake.hits] == ["/search.naver"]  # the first page was enough


def test_naver_honours_retry_after() -> None:
    with FakeNaver(mode="ratelimit", retry_after="7") as fake:
        sleeps = Sleeps()
        found = NaverSource(settings_for(fake), sleep=sleeps).search(QUERY, 1000)
        assert urls_of(found) == fake.expected_urls()
        assert sleeps.calls.count(7.0) == 2  # once for the page, once for the first XHR page


def test_naver_gives_up_on_long_or_endless_rate_limits() -> None:
    with FakeNaver(mode="ratelimit", retry_after="600") as fake:
        with pytest.raises(SourceError, match="asks to wait 600 s") as error:
            NaverSource(settings_for(fake), sleep=Sleeps()).search(QUERY, 10)
        assert error.value.kind == "rate_limited"
    with FakeNaver(mode="ratelimit", ratelimit_count=5) as fake:
        with pytest.raises(SourceError, match="429") as error:
            NaverSource(settings_for(fake, retries=1), sleep=Sleeps()).search(QUERY, 10)
        assert error.value.kind == "rate_limited"


def test_naver_works_when_called_inside_an_event_loop(fake: FakeNaver) -> None:
    async def caller() -> list[Candidate]:
        return NaverSource(settings_for(fake)).search(QUERY, 10)  # a sync call from async code

    assert urls_of(asyncio.run(caller())) == fake.expected_urls()[:10]


def test_naver_follows_next_pages_only_on_its_own_hosts(fake: FakeNaver) -> None:
    source = NaverSource(settings_for(fake))
    assert source._next_url("https://evil.example/p/c/image/46/search.naver?start=51") == ""
    assert source._next_url("/p/c/image/46/search.naver?start=51").startswith(fake.base_url)


def test_naver_changed_page_falls_back_to_the_xhr_endpoint() -> None:
    with FakeNaver(mode="changed") as fake:
        found = NaverSource(settings_for(fake)).search(QUERY, 1000)
        assert_exactly_images(found, fake, "naver")
        first_xhr = next(h for h in fake.hits if "/p/c/image/" in h.path)
        assert first_xhr.path == "/p/c/image/search.naver" and first_xhr.query["start"] == "1"


@pytest.mark.parametrize(
    ("mode", "kind", "words"),
    [
        ("blocked", "blocked", "captcha"),
        ("adult", "adult", "adult filter"),
        ("empty", "empty", "no images found"),
        ("bad_html", "bad_answer", "got an HTML page"),
        ("bad_truncated", "bad_answer", "not valid JSON"),
        ("bad_types", "bad_answer", "not a list"),
        ("huge", "bad_answer", "larger than 10 MiB"),
    ],
)
def test_naver_bad_pages_raise_a_clear_source_error(mode: str, kind: str, words: str) -> None:
    with FakeNaver(mode=mode) as fake:
        with pytest.raises(SourceError) as error:
            NaverSource(settings_for(fake)).search(QUERY, 100)
    assert (error.value.source, error.value.kind) == ("naver", kind)
    assert words in str(error.value)


def test_naver_keeps_earlier_pages_when_a_later_one_breaks() -> None:
    with FakeNaver(mode="bad_xhr") as fake:  # the page's data arrives, every XHR page is HTML
        found = NaverSource(settings_for(fake)).search(QUERY, 1000)
        assert urls_of(found) == fake.expected_urls()[:47]  # 50 entries on page 1, less 3 skipped


# --- parsing details ----------------------------------------------------------------------------

def test_js_literal_to_json_handles_what_pages_use() -> None:
    literal = (
        """{shopAd:{items:null},content:{url:'a\\'b',"""
        """items:[{"t":"<\\/mark>\\x41",n:-1.5e3,ok:!0,no:!1,u:undefined,},],}}"""
    )
    assert json.loads(js_literal_to_json(literal)) == {
        "shopAd": {"items": None},
        "content": {"url": "a'b", "items": [{"t": "</mark>A", "n": -1500.0, "ok": True, "no": False, "u": None}]},
    }
    with pytest.raises(ValueError):
        js_literal_to_json("{a: alert(1)}")


def test_both_marker_spellings_are_found() -> None:
    body = '{content:{url:"",items:[{"type":"image","originalUrl":"https://x.example/a.jpg"}]}}'
    spelled_2024 = f"<script>var imageSearchTabData={body}</script>"
    spelled_2026 = f'<script type="text/javascript">\n var  imageSearchTabData =\n{body};\n</script>'
    for page in (spelled_2024, spelled_2026, f"<script>window.imageSearchTabData = {body}</script>"):
        found = extract_embedded(page)
        assert found is not None and found.items[0]["originalUrl"] == "https://x.example/a.jpg"
    assert extract_embedded("<html>no data</html>") is None


def test_xhr_body_forms() -> None:
    payload = {"url": "", "items": [{"originalUrl": "https://x.example/a.jpg"}]}
    for body in (json.dumps(payload), f"getPhoto({json.dumps(payload)});", json.dumps({"content": payload})):
        assert parse_xhr_body(body).items == payload["items"]
    item = '{"originalUrl":"https%3A%2F%2Fx.example%2F%25B0.jpg","title":"%EA%B3%A0"}'
    legacy = parse_xhr_body('({"url":"","items":[' + item + "]})")
    assert legacy.percent_encoded
    candidate = candidate_from_item(legacy.items[0], "naver", percent_encoded=True)
    assert candidate is not None and candidate.url == "https://x.example/%B0.jpg" and candidate.title == "고"


def test_thumbnail_decoding_is_done_once() -> None:
    thumb = "https://search.pstatic.net/common/?src=http%3A%2F%2Fblogfiles.naver.net%2Fa%2F2025%25B3%25E2.png&type=a340"
    assert original_from_thumbnail(thumb) == "http://blogfiles.naver.net/a/2025%B3%E2.png"
    raw_euc_kr = "https://search.pstatic.net/sunny/?src=http%3A%2F%2Fx.example%2F%B0%ED.jpg&type=a340"
    assert original_from_thumbnail(raw_euc_kr) == "http://x.example/%B0%ED.jpg"  # not mangled into U+FFFD
    assert original_from_thumbnail("https://search.pstatic.net/common/?type=a340") is None
    assert candidate_from_item({"type": "shopAd", "originalUrl": "https://x.example/a.jpg"}, "naver") is None
    zero_size = {"type": "image", "originalUrl": "https://x.example/a.jpg", "orgWidth": 0}
    assert candidate_from_item(zero_size, "naver") is None


def test_retry_after_forms() -> None:
    assert retry_after_s("5") == 5.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: go now
    assert retry_after_s("soon") is None


# --- naver-api ----------------------------------------------------------------------------------

def test_naver_api_returns_exactly_the_images(fake: FakeNaver) -> None:
    found = NaverApiSource(settings_for(fake)).search(QUERY, 1000)
    assert_exactly_images(found, fake, "naver-api")
    assert found[0].title == "귀여운 고양이 사진 1" and found[0].source_page is None
    calls = [h for h in fake.hits if h.path == "/v1/search/image"]
    assert [(h.query["start"], h.query["display"]) for h in calls] == [("1", "100"), ("101", "100")]
    assert calls[0].headers["X-Naver-Client-Id"] == fake.client_id


def test_naver_api_respects_the_start_limit() -> None:
    with FakeNaver(count=1200) as fake:  # more than the API may page through
        found = NaverApiSource(settings_for(fake)).search(QUERY, 5000)
        starts = [int(h.query["start"]) for h in fake.hits if h.path == "/v1/search/image"]
    assert starts == [*range(1, 1000, 100), 1000]  # never beyond start=1000 (SE03)
    assert urls_of(found) == fake.expected_urls()[: len(found)] and len(found) == 1097


def test_naver_api_needs_credentials(fake: FakeNaver) -> None:
    with pytest.raises(SourceError, match="CVDB_NAVER_CLIENT_ID and CVDB_NAVER_CLIENT_SECRET") as error:
        NaverApiSource(settings_for(fake, naver_client_id=None)).search(QUERY, 10)
    assert error.value.kind == "credentials" and not fake.hits
    with pytest.raises(SourceError, match="rejected the Client ID") as error:
        NaverApiSource(settings_for(fake, naver_client_secret="wrong")).search(QUERY, 10)
    assert error.value.kind == "credentials"


@pytest.mark.parametrize(
    ("fake_options", "kind", "words"),
    [
        ({"api_quota": 0}, "quota", "daily quota"),
        ({"mode": "se99"}, "api_error", "SE99"),
        ({"mode": "api_forbidden"}, "credentials", "may not use the Search API"),
        ({"mode": "empty"}, "empty", "no images found"),
        ({"mode": "bad_html"}, "bad_answer", "HTML page"),
        ({"mode": "bad_truncated"}, "bad_answer", "invalid JSON"),
        ({"mode": "bad_types"}, "bad_answer", "no list of items"),
    ],
)
def test_naver_api_errors_are_explained(fake_options: dict[str, Any], kind: str, words: str) -> None:
    with FakeNaver(**fake_options) as fake:
        with pytest.raises(SourceError) as error:
            NaverApiSource(settings_for(fake), sleep=Sleeps()).search(QUERY, 10)
    assert (error.value.source, error.value.kind) == ("naver-api", kind)
    assert words in str(error.value)


def test_naver_api_wrong_path_and_every_code_has_a_message(fake: FakeNaver) -> None:
    with pytest.raises(SourceError, match=r"SE05.*naver_api_url"):
        NaverApiSource(settings_for(fake, naver_api_url=f"{fake.base_url}/v1/search/imagex")).search(QUERY, 10)
    for code, meaning in API_ERRORS.items():
        body = json.dumps({"errorCode": code, "errorMessage": "x"})
        assert api_error(Reply(400, body, "application/json", "u")).message.startswith(meaning)
    assert "HTTP 502" in api_error(Reply(502, "<html>", "text/html", "u")).message


# --- search(): one source or auto ---------------------------------------------------------------

def test_search_named_source(fake: FakeNaver) -> None:
    result = search(QUERY, 1000, settings_for(fake), source="naver")
    assert isinstance(result, SearchResult) and result.served_by == "naver"
    assert urls_of(result.candidates) == fake.expected_urls()
    assert [a["outcome"] for a in result.attempts] == ["ok"]


def test_a_failing_named_source_raises() -> None:
    with FakeNaver(mode="blocked") as fake:
        with pytest.raises(SourceError) as error:
            search(QUERY, 10, settings_for(fake), source="naver")
    assert error.value.source == "naver" and error.value.kind == "blocked"
    with pytest.raises(SourceError, match="unknown source 'bing'"):
        search(QUERY, 10, Settings(), source="bing")


def test_auto_falls_back_to_the_api_when_naver_is_blocked() -> None:
    with FakeNaver(mode="blocked") as fake:  # the captcha blocks the page, not the Open API
        result = search(QUERY, 1000, settings_for(fake), source="auto")
        assert result.served_by == "naver-api"
        assert urls_of(result.candidates) == fake.expected_urls()
    assert [(a["source"], a["outcome"]) for a in result.attempts] == [("naver", "failed"), ("naver-api", "ok")]
    assert "captcha" in result.attempts[0]["error"]


class StubBrowser:
    name = "naver-browser"

    def search(self, query: str, limit: int) -> list[Candidate]:
        return [Candidate(url="https://x.example/a.jpg", source=self.name, rank=1)]


def test_auto_skips_the_api_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SOURCES, "naver-browser", lambda settings, urls: StubBrowser())
    with FakeNaver(mode="empty") as fake:
        settings = settings_for(fake, naver_client_id=None, naver_client_secret=None)
        result = search(QUERY, 10, settings, source="auto")
    assert result.served_by == "naver-browser"
    outcomes = [(a["source"], a["outcome"]) for a in result.attempts]
    assert outcomes == [("naver", "empty"), ("naver-api", "skipped"), ("naver-browser", "ok")]
    assert "CVDB_NAVER_CLIENT_ID" in result.attempts[1]["error"]


def test_auto_raises_when_every_source_fails() -> None:
    with FakeNaver(mode="empty") as fake:
        settings = settings_for(fake, source_order=("naver", "naver-api"))
        with pytest.raises(SourceError, match=r"no source found images: naver empty.*naver-api empty") as error:
            search(QUERY, 10, settings, source="auto")
    assert error.value.source == "auto" and error.value.kind == "empty"


def test_a_urls_file_wins_over_the_configured_source(tmp_path: Any) -> None:
    listing = tmp_path / "u.txt"
    listing.write_text("https://x.example/a.jpg\n")
    result = search(QUERY, 10, Settings(source="naver"), urls_file=str(listing))
    assert result.served_by == "urls" and urls_of(result.candidates) == ["https://x.example/a.jpg"]
    with pytest.raises(SourceError, match="pass --urls"):
        search(QUERY, 10, Settings(), source="urls")
