"""SSRF rules: address classification, URL pre-checks, the connector and the redirect-hop check.

Nothing here reaches the internet: every refusal must happen before a socket connects, which the
`connects` fixture records (it wraps `socket.socket.connect`, which asyncio calls for every TCP
connection aiohttp opens).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from common.config import Settings
from common.devkit.image_server import ImageServer
from common.pipeline import netsafety
from common.pipeline.fetch import fetch_all

pytestmark = pytest.mark.timeout(60)

NOT_PUBLIC = [
    "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254", "0.0.0.0",
    "224.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "240.0.0.1", "192.88.99.1",
    "100.100.100.200", "168.63.129.16", "169.254.170.2",
    "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd00:ec2::254", "fec0::1", "ff02::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",  # IPv4-mapped
    "2002:7f00:1::", "2002:a9fe:a9fe::1",  # 6to4 wrapping loopback and metadata
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 wrapping loopback and metadata
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "::a9fe:a9fe",  # IPv4-compatible metadata
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("ip", NOT_PUBLIC)
def test_non_public_addresses_are_refused(ip: str) -> None:
    assert not netsafety.is_public_address(ip)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_pass(ip: str) -> None:
    assert netsafety.is_public_address(ip)


@pytest.mark.parametrize("ip", ["169.254.169.254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe",
                                "2002:a9fe:a9fe::", "fd00:ec2::254", "100.100.100.200"])
def test_metadata_addresses_are_refused_even_when_private_addresses_are_allowed(ip: str) -> None:
    assert netsafety.is_metadata_address(ip)
    with pytest.raises(netsafety.UnsafeURLError) as refused:
        netsafety.check_address(ip, allow_private=True)
    assert refused.value.reason == "blocked_address"


BLOCKED_URLS = {
    "http://169.254.169.254/latest/meta-data/": "blocked_address",
    "http://10.0.0.1/a.jpg": "blocked_address",
    "http://[::ffff:127.0.0.1]/a.jpg": "blocked_address",
    "http://[::1]:8080/a.jpg": "blocked_address",
    "http://[fd00:ec2::254]/": "blocked_address",
    "http://metadata.google.internal/computeMetadata/v1/": "blocked_address",
    "http://METADATA.google.internal./": "blocked_address",
    "http://kubernetes.default.svc/": "blocked_address",
    "http://example.com:22/a.jpg": "blocked_address",
    "http://0x7f.1/a.jpg": "invalid_url",
    "http://2130706433/a.jpg": "invalid_url",
    "http://127.1/a.jpg": "invalid_url",
    "http://0177.0.0.1/a.jpg": "invalid_url",
    "http://%31%32%37.0.0.1/a.jpg": "invalid_url",
    "ftp://example.com/a.jpg": "invalid_url",
    "file:///etc/passwd": "invalid_url",
    "http:///a.jpg": "invalid_url",
    "http://user:secret@example.com/a.jpg": "invalid_url",
    "http://example.com:99999/a.jpg": "invalid_url",
    "http://example.com/" + "a" * 2100: "invalid_url",
    "not a url": "invalid_url",
}


@pytest.mark.parametrize(("url", "reason"), BLOCKED_URLS.items())
def test_check_url_refuses(url: str, reason: str) -> None:
    with pytest.raises(netsafety.UnsafeURLError) as refused:
        netsafety.check_url(url, Settings())
    assert refused.value.reason == reason
    assert refused.value.detail


@pytest.mark.parametrize("url", ["https://example.com/a.jpg", "http://img.example.com:8080/a.jpg?x=1",
                                 "https://bücher.de/bild.jpg", "http://8.8.8.8/a.png", "http://[2606:4700::1111]/"])
def test_check_url_accepts_public_urls(url: str) -> None:
    assert netsafety.check_url(url, Settings()).raw_host


def test_private_mode_allows_private_addresses_and_any_port_but_not_metadata() -> None:
    private = Settings(allow_private_addresses=True)
    assert netsafety.check_url("http://10.0.0.1:5000/a.jpg", private)
    assert netsafety.check_url("http://localhost:5000/a.jpg", private)
    for url in ("http://169.254.169.254/", "http://[::ffff:a9fe:a9fe]/", "http://metadata.goog/"):
        with pytest.raises(netsafety.UnsafeURLError):
            netsafety.check_url(url, private)


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Addresses every TCP connect in this process went to (asyncio calls `sock.connect`)."""
    calls: list[Any] = []
    original = socket.socket.connect

    def spy(self: socket.socket, address: Any) -> Any:
        calls.append(address)
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    return calls


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as running:
        yield running


def test_refusals_happen_before_any_connection(connects: list[Any]) -> None:
    urls = list(BLOCKED_URLS)
    downloads = fetch_all(urls, Settings(connect_timeout_s=1, total_timeout_s=2, retries=0))
    assert {d.url: d.reason for d in downloads} == {url: BLOCKED_URLS[url] for url in urls}
    assert all(d.attempts == 0 for d in downloads)
    assert connects == []


def test_the_connect_spy_sees_real_connections(server: ImageServer, connects: list[Any]) -> None:
    url = server.add("/spy.jpg", (b"\xff\xd8\xff" + b"\0" * 64))
    [download] = fetch_all([url], Settings(allow_private_addresses=True))
    assert download.ok
    assert ("127.0.0.1", server.port) in connects


def test_the_fixture_server_is_refused_without_private_mode(server: ImageServer, connects: list[Any]) -> None:
    by_literal = server.add("/literal.jpg", b"\xff\xd8\xff" + b"\0" * 64)
    by_name = f"http://localhost:{server.port}/by-name.jpg"  # passes check_url; the connector refuses it
    strict = Settings(allowed_ports=(server.port,), retries=2, retry_backoff_s=0.01)
    downloads = {d.url: d for d in fetch_all([by_literal, by_name], strict)}
    assert downloads[by_literal].reason == "blocked_address"
    assert downloads[by_name].reason == "blocked_address"
    assert downloads[by_name].attempts == 1  # a refusal is never retried
    assert "not a public internet address" in (downloads[by_name].detail or "")
    assert server.hits["/literal.jpg"] == server.hits["/by-name.jpg"] == 0
    assert connects == []


def test_a_redirect_to_the_metadata_service_is_refused(server: ImageServer, connects: list[Any]) -> None:
    [download] = fetch_all([server.url("/redirect-private")], Settings(allow_private_addresses=True))
    assert download.reason == "blocked_address"
    assert "metadata" in (download.detail or "")
    assert server.hits["/redirect-private"] == 1
    assert all(address[0] == "127.0.0.1" for address in connects)


def test_strict_mode_refuses_a_redirect_from_an_allowed_host_to_a_private_address(
    server: ImageServer, connects: list[Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Default (strict) mode, with only the test server's 127.0.0.1 counted as public: its 302 to
    10.0.0.1 is refused at that hop, before any connection there, while a 302 back to itself is followed."""
    really_public = netsafety.is_public_address
    monkeypatch.setattr(netsafety, "is_public_address",
                        lambda ip: str(netsafety.parse_ip(ip)) == "127.0.0.1" or really_public(ip))
    recording = socket.socket.connect  # the `connects` spy

    def loopback_only(self: socket.socket, address: Any) -> Any:
        """Should the guard fail, the attempt is recorded but never leaves this machine."""
        if address[0] != "127.0.0.1":
            connects.append(address)
            raise ConnectionRefusedError(f"test: no connection to {address[0]}")
        return recording(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    strict = Settings(allowed_ports=(80, 443, server.port), retries=2, retry_backoff_s=0.01,
                      connect_timeout_s=1, total_timeout_s=3)
    assert not strict.allow_private_addresses
    to_private = server.url("/redirect?to=http://10.0.0.1/a.jpg")
    allowed_image = server.add("/strict-ok.jpg", b"\xff\xd8\xff" + b"\0" * 64)
    to_itself = server.url(f"/redirect?to={allowed_image}")
    downloads = {d.url: d for d in fetch_all([to_private, to_itself], strict)}
    assert downloads[to_itself].ok  # the allowed host, redirects included, really is allowed
    refused = downloads[to_private]
    assert (refused.reason, refused.attempts) == ("blocked_address", 1)
    assert "10.0.0.1 is not a public internet address" in (refused.detail or "")
    assert server.hits["/redirect"] == 2 and server.hits["/strict-ok.jpg"] == 1
    assert connects and all(address[0] == "127.0.0.1" for address in connects)


def test_a_redirect_to_another_scheme_is_refused(server: ImageServer) -> None:
    [download] = fetch_all([server.url("/redirect?to=file:///etc/passwd")], Settings(allow_private_addresses=True))
    assert download.reason == "invalid_url"


def test_the_connector_checks_every_resolved_address() -> None:
    async def resolve(host: str, allow_private: bool) -> list[str]:
        connector = netsafety.SafeConnector(allow_private_addresses=allow_private)
        try:
            return [r["host"] for r in await connector._resolve_host(host, 80)]
        finally:
            await connector.close()

    assert asyncio.run(resolve("127.0.0.1", True)) == ["127.0.0.1"]
    for host, allow_private in [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                ("169.254.169.254", True), ("metadata.google.internal", True)]:
        with pytest.raises(netsafety.UnsafeURLError):
            asyncio.run(resolve(host, allow_private))


def test_the_redirect_guard_alone_stops_a_hop_before_connecting(server: ImageServer, connects: list[Any]) -> None:
    """With a plain connector, only the middleware stands between a 302 and the metadata service."""

    async def follow(url: str) -> None:
        guard = netsafety.redirect_guard(Settings(allow_private_addresses=True))
        async with aiohttp.ClientSession(middlewares=(guard,), timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(url) as response:
                await response.read()

    with pytest.raises(netsafety.UnsafeURLError, match="metadata"):
        asyncio.run(follow(server.url("/redirect-private")))
    assert connects and all(address[0] == "127.0.0.1" for address in connects)
