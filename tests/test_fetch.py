"""The downloader against a real aiohttp server on 127.0.0.1: outcomes, retries, caps and limits.

Assertions are on outcomes and request counts, never on how long something took.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import io
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from common.config import Settings
from common.devkit.image_server import ImageServer, small_jpeg
from common.pipeline import reasons
from common.pipeline.fetch import (
    fetch_all,
    fetch_stream,
    robots_forbid,
    sniff_image_format,
)
from common.pipeline.records import Download
from common.pipeline.retry_after import retry_after_s

pytestmark = pytest.mark.timeout(60)


def _encode(fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buffer, fmt, **options)
    return buffer.getvalue()


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"allow_private_addresses": True, "retry_backoff_s": 0.01, "retries": 2}
    return Settings(**(values | overrides))


def one(url: str, **overrides: Any) -> Download:
    [download] = fetch_all([url], settings(**overrides))
    return download


@pytest.fixture(scope="module")
def running() -> Iterator[ImageServer]:
    with ImageServer(oversized_bytes=2 * 1024 * 1024) as server:
        yield server


@pytest.fixture
def server(running: ImageServer) -> ImageServer:
    running.reset_stats()
    return running


@pytest.mark.parametrize(("fmt", "name"), [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"),
                                           ("GIF", "gif"), ("BMP", "bmp")])
def test_sniff_recognises_each_allowed_format(fmt: str, name: str) -> None:
    assert sniff_image_format(_encode(fmt)[:32]) == name


@pytest.mark.parametrize("head", [b"", b"<!doctype html><html>", b'{"error": "not found"}', b"BMW is a car maker",
                                  b"RIFF\0\0\0\0WAVEfmt ", b"\0\0\0\x1cftypavif"])
def test_sniff_rejects_everything_else(head: bytes) -> None:
    assert sniff_image_format(head) is None


def test_magic_bytes_decide_the_format(server: ImageServer) -> None:
    jpeg_as_png = server.add("/lies/photo.png", small_jpeg(), "image/png")
    png_as_jpeg = server.add("/lies/photo.jpg", _encode("PNG"), "image/jpeg")
    downloads = {d.url: d for d in fetch_all([jpeg_as_png, png_as_jpeg], settings())}
    assert downloads[jpeg_as_png].ok and downloads[jpeg_as_png].image_format == "jpeg"
    assert downloads[jpeg_as_png].data == small_jpeg()
    assert downloads[jpeg_as_png].content_type == "image/png"
    assert downloads[png_as_jpeg].ok and downloads[png_as_jpeg].image_format == "png"
    assert downloads[png_as_jpeg].status == 200 and downloads[png_as_jpeg].attempts == 1
    assert downloads[png_as_jpeg].final_url == png_as_jpeg


def test_404_is_not_retried(server: ImageServer) -> None:
    download = one(server.url("/status/404"))
    assert (download.reason, download.status, download.attempts) == ("http_404", 404, 1)
    assert server.hits["/status/404"] == 1


def test_500_is_retried_the_configured_number_of_times(server: ImageServer) -> None:
    download = one(server.url("/status/500"), retries=2)
    assert (download.reason, download.status, download.attempts) == ("http_500", 500, 3)
    assert server.hits["/status/500"] == 3


def test_429_with_retry_after_then_success(server: ImageServer) -> None:
    download = one(server.url("/flaky/retry-after"))
    assert download.ok and download.attempts == 2
    assert server.hits["/flaky/retry-after"] == 2


def test_a_retry_after_beyond_the_cap_gives_up(server: ImageServer) -> None:
    download = one(server.url("/flaky/too-long"), max_retry_after_s=0.5)
    assert (download.reason, download.attempts) == ("http_429", 1)
    assert "retry after" in (download.detail or "")


def test_503_twice_then_success(server: ImageServer) -> None:
    download = one(server.url("/flaky503/twice"), retries=2)
    assert download.ok and download.attempts == 3


def test_a_slow_server_times_out(server: ImageServer) -> None:
    download = one(server.url("/slow/20"), read_timeout_s=0.3, retries=1)
    assert (download.reason, download.attempts) == ("timeout", 2)
    assert server.hits["/slow/20"] == 2


def test_a_refused_connection_is_a_retried_connection_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    download = one(f"http://127.0.0.1:{port}/a.jpg", retries=1)
    assert (download.reason, download.attempts) == ("connection_error", 2)


def test_redirects_are_followed_up_to_the_limit(server: ImageServer) -> None:
    within, beyond = server.url("/redirect-chain/2"), server.url("/redirect-chain/3")
    downloads = {d.url: d for d in fetch_all([within, beyond], settings(max_redirects=2))}
    assert downloads[within].ok and downloads[within].final_url == server.url("/redirect-chain/0")
    assert downloads[beyond].reason == "too_many_redirects"
    assert one(server.url("/redirect-chain/1"), max_redirects=0).reason == "too_many_redirects"


@pytest.mark.parametrize("path", ["/oversized.jpg", "/big-length.jpg"])
def test_bodies_over_the_cap_are_too_large(server: ImageServer, path: str) -> None:
    download = one(server.url(path), max_bytes=256 * 1024)
    assert (download.reason, download.data, download.attempts) == ("too_large", None, 1)


def test_the_cap_leaves_smaller_bodies_alone(server: ImageServer) -> None:
    download = one(server.url("/oversized.jpg"), max_bytes=4 * 1024 * 1024)  # 2 MiB, streamed
    assert download.ok and len(download.data or b"") == server.oversized_bytes
    exact = server.add("/exactly-the-cap.jpg", small_jpeg() + b"\0" * (4096 - len(small_jpeg())))
    assert one(exact, max_bytes=4096).ok


@pytest.mark.parametrize(("path", "reason"), [("/html", "not_an_image"), ("/fake.jpg", "not_an_image"),
                                              ("/empty.jpg", "empty_body")])
def test_bodies_that_are_not_images(server: ImageServer, path: str, reason: str) -> None:
    download = one(server.url(path))
    assert (download.reason, download.status, download.attempts) == (reason, 200, 1)


def test_noai_is_honoured_and_can_be_turned_off(server: ImageServer) -> None:
    assert one(server.url("/noai.jpg")).reason == "robots_noai"
    download = one(server.url("/noai.jpg"), honour_robots_tag=False)
    assert download.ok and download.image_format == "jpeg"


@pytest.mark.parametrize(("values", "forbidden"), [
    (["noai"], True), (["NoImageAI"], True), (["noindex, nofollow"], True), (["noimageindex"], True),
    (["nofollow"], False), ([], False), (["otherbot: noai"], False),
    (["cv-dataset-builder: noindex"], True), (["otherbot: noai", "all"], False),
    (["unavailable_after: 25 Jun 2010 15:00:00 PST"], False), (["max-image-preview:large, noai"], True),
])
def test_robots_tag_parsing(values: list[str], forbidden: bool) -> None:
    assert robots_forbid(values, Settings().user_agent) is forbidden


def test_a_robots_tag_for_our_bot_name(server: ImageServer) -> None:
    url = server.add("/ours.jpg", small_jpeg(), headers={"X-Robots-Tag": "cv-dataset-builder: noai"})
    assert one(url).reason == "robots_noai"


def test_a_url_given_twice_is_fetched_once(server: ImageServer) -> None:
    url = server.add("/twice.jpg", small_jpeg())
    downloads = fetch_all([url, url, url + "#fragment"], settings())
    assert sorted(str(d.reason) for d in downloads) == ["None", "duplicate_url", "duplicate_url"]
    assert server.hits["/twice.jpg"] == 1


class Gate:
    """Holds every /gate request, on any server, until the limit under test is full and has stayed
    full for HOLD_S (time for a client that ignores its limit to send more), or until it is passed;
    then opens for good. It counts requests in its handlers, exactly, per host (server port) and in all."""

    HOLD_S = 1.0
    REACH_TIMEOUT_S = 10.0  # a limit never reached opens the gate too, and the test then fails

    def __init__(self, hosts: int, total: int | None = None, per_host: int | None = None) -> None:
        self.hosts, self.total, self.per_host = hosts, total, per_host
        self.active: collections.Counter[int] = collections.Counter()
        self.most_per_host: collections.Counter[int] = collections.Counter()
        self.most_total = 0
        self.opened = threading.Event()
        self._lock = threading.Lock()
        self._full_since: float | None = None

    def _full(self) -> bool:
        total_full = self.total is None or sum(self.active.values()) >= self.total
        host_full = self.per_host is None or sum(n >= self.per_host for n in self.active.values()) == self.hosts
        return total_full and host_full

    def _passed(self) -> bool:
        over_total = self.total is not None and sum(self.active.values()) > self.total
        return over_total or (self.per_host is not None and any(n > self.per_host for n in self.active.values()))

    async def hold(self, port: int) -> None:
        with self._lock:
            self.active[port] += 1
            self.most_per_host[port] = max(self.most_per_host[port], self.active[port])
            self.most_total = max(self.most_total, sum(self.active.values()))
        try:
            deadline = time.monotonic() + self.REACH_TIMEOUT_S
            while not self.opened.is_set():
                with self._lock:
                    now = time.monotonic()
                    if self._full():
                        self._full_since = self._full_since or now
                    if self._passed() or now > deadline or (self._full_since and now - self._full_since >= self.HOLD_S):
                        self.opened.set()
                await asyncio.sleep(0.005)
        finally:
            with self._lock:
                self.active[port] -= 1


class GatedServer(ImageServer):
    """The devkit image server plus one route, /gate: a small JPEG once the shared Gate opens."""

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate

    def _app(self) -> web.Application:
        app = super()._app()
        app.router.add_get("/gate", self._gated)
        return app

    async def _gated(self, request: web.Request) -> web.StreamResponse:
        await self.gate.hold(self.port)
        return web.Response(body=small_jpeg(), content_type="image/jpeg")


def _fetch_through(gate: Gate, per_server: int, **limits: int) -> list[int]:
    """Fetch `per_server` gated URLs from each of `gate.hosts` servers (each port a host); their ports."""
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(GatedServer(gate)) for _ in range(gate.hosts)]
        urls = [server.url(f"/gate?n={i}") for i in range(per_server) for server in servers]
        # Held requests must not time out: the client waits longer than the gate ever holds them.
        downloads = fetch_all(urls, settings(read_timeout_s=30, total_timeout_s=40, **limits))
        assert len(downloads) == len(urls) and all(d.ok for d in downloads), [d.reason for d in downloads]
        assert sum(server.hits["/gate"] for server in servers) == len(urls)
        return [server.port for server in servers]


def test_the_global_limit_is_reached_and_never_passed() -> None:
    gate = Gate(hosts=3, total=4)
    ports = _fetch_through(gate, per_server=4, concurrency=4, per_host_concurrency=8)
    assert gate.most_total == 4
    assert all(gate.most_per_host[port] >= 1 for port in ports)


def test_the_per_host_limit_is_reached_on_every_host_and_never_passed() -> None:
    gate = Gate(hosts=3, per_host=2)
    ports = _fetch_through(gate, per_server=4, concurrency=32, per_host_concurrency=2)
    assert {port: gate.most_per_host[port] for port in ports} == dict.fromkeys(ports, 2)
    assert gate.most_total == 6


def test_the_input_is_consumed_lazily(server: ImageServer) -> None:
    url = server.add("/lazy.jpg", small_jpeg())
    pulled = 0

    def urls() -> Iterator[str]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield f"{url}?n={i}"

    async def first() -> int:
        stream = fetch_stream(urls(), settings(concurrency=3))
        try:
            await anext(stream)
            return pulled
        finally:
            await stream.aclose()

    assert asyncio.run(first()) <= 3
    assert server.hits["/lazy.jpg"] <= 3


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a.jpg", "http:///a.jpg", "http://user:pw@127.0.0.1/a.jpg",
                                 "/relative/a.jpg", ""])
def test_invalid_urls_are_refused_without_a_request(url: str) -> None:
    download = one(url)
    assert (download.reason, download.attempts, download.url) == ("invalid_url", 0, url)
    assert download.detail


def test_one_download_per_url_and_every_reason_is_documented(server: ImageServer) -> None:
    paths = ["/status/404", "/html", "/noai.jpg", "/empty.jpg", "/redirect-private", "/redirect-chain/9"]
    urls = [server.url(p) for p in paths] + ["ftp://x/", server.url("/html")]
    downloads = fetch_all(urls, settings(max_bytes=1024 * 1024))
    assert sorted(d.url for d in downloads) == sorted(urls)
    for download in downloads:
        assert download.reason and download.detail and download.detail.endswith(".")
        assert reasons.explain(download.reason) != download.reason


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    soon = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert retry_after_s("7") == 7.0
    assert 20 < (retry_after_s(soon) or 0) <= 30
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait
    assert retry_after_s("soon") is None and retry_after_s(None) is None


def test_one_retry_rule_for_downloads_and_sources() -> None:
    from common.pipeline.retry_after import retry_wait

    assert [retry_wait(n, None, 0.5, 30) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]  # backoff doubles
    assert retry_wait(1, 12.0, 0.5, 30) == 12.0  # the server's Retry-After wins
    assert retry_wait(1, 31.0, 0.5, 30) is None  # but not past the limit: give up
