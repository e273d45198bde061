"""What the downloader may connect to: URL pre-checks and address rules against SSRF.

Three layers, all raising `UnsafeURLError` (reason `invalid_url` or `blocked_address`):

1. `check_url` before a request: http/https only, no user info, a well-formed host, an allowed
   port, at most 2048 characters, no metadata host names, and IP literals must be public.
2. `SafeConnector`, an aiohttp `TCPConnector` whose `_resolve_host` checks every address the
   resolver returns (IP literals too). aiohttp connects to exactly those answers and uses the
   host name only for TLS SNI, so the check and the connection use one lookup (no DNS rebinding).
3. `redirect_guard`, a client middleware (aiohttp >= 3.12) that runs `check_url` on every
   redirect hop, so a 302 to an internal address is refused before a connection is attempted.

`allow_private_addresses=True` (tests serve from 127.0.0.1) turns off the private-address and
port rules; cloud metadata addresses and host names stay refused in every mode.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import hdrs
from aiohttp.abc import ResolveResult
from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType
from aiohttp.tracing import Trace
from yarl import URL

from common.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
SCHEMES = frozenset({"http", "https"})
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean instance metadata
    "169.254.170.2", "169.254.170.23",  # AWS ECS task metadata
    "169.254.0.23",  # Tencent Cloud
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure wire server
    "fd00:ec2::254",  # AWS IMDS over IPv6
))
METADATA_HOSTNAMES = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal",
    "metadata.azure.com", "metadata.oraclecloud.com", "metadata.digitalocean.com",
    "metadata.tencentyun.com", "kubernetes.default", "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
})
_DENIED_NETWORKS = (ipaddress.ip_network("192.88.99.0/24"),)  # 6to4 relay anycast
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


class UnsafeURLError(aiohttp.ClientError):
    """A URL or address the downloader refuses to fetch, with a reason code and a sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_ip(value: str | IPAddress) -> IPAddress | None:
    """The address in an IP literal (IPv6 zone dropped), or None when `value` is not one."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    try:
        return ipaddress.ip_address(value.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _reached_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address really reaches: IPv4-mapped, 6to4 and NAT64 forms."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """`ip` and every IPv4 address embedded in it (including both Teredo endpoints)."""
    found: list[IPAddress] = [ip]
    if (reached := _reached_ipv4(ip)) is not None:
        found.append(reached)
    if isinstance(ip, ipaddress.IPv6Address) and ip.teredo is not None:
        found.extend(ip.teredo)
    if isinstance(ip, ipaddress.IPv6Address) and int(ip) >> 32 == 0 and int(ip) > 1:
        found.append(ipaddress.IPv4Address(int(ip)))  # deprecated IPv4-compatible ::a.b.c.d
    return found


def is_metadata_address(ip: str | IPAddress) -> bool:
    address = parse_ip(ip)
    return address is not None and any(a in METADATA_ADDRESSES for a in _embedded(address))


def _plainly_public(ip: IPAddress) -> bool:
    if any(ip in net for net in _DENIED_NETWORKS):
        return False
    special = ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local
    return ip.is_global and not special and not site_local


def is_public_address(ip: str | IPAddress) -> bool:
    """True only for a globally reachable unicast address that is not a metadata endpoint.

    Wrapped IPv4 (mapped, 6to4, NAT64 64:ff9b::/96) is judged by the IPv4 it reaches; a Teredo
    address must be public itself and in both embedded endpoints. `is_global` is required, which
    also excludes CGNAT 100.64/10 (not `is_private`, but not global either).
    """
    address = parse_ip(ip)
    if address is None or is_metadata_address(address):
        return False
    if (reached := _reached_ipv4(address)) is not None:
        return _plainly_public(reached)
    return all(_plainly_public(a) for a in _embedded(address))


def check_address(ip: str | IPAddress, *, allow_private: bool) -> None:
    """Raise `UnsafeURLError("blocked_address")` unless the downloader may connect to `ip`."""
    address = parse_ip(ip)
    if address is None:
        raise UnsafeURLError("blocked_address", f"{ip!r} is not an IP address.")
    if is_metadata_address(address):
        raise UnsafeURLError("blocked_address", f"{address} is a cloud metadata address.")
    if not allow_private and not is_public_address(address):
        raise UnsafeURLError("blocked_address", f"{address} is not a public internet address.")


def is_metadata_hostname(host: str) -> bool:
    name = host.lower().rstrip(".")
    return any(name == m or name.endswith("." + m) for m in METADATA_HOSTNAMES)


def check_host(host: str, *, allow_private: bool) -> None:
    """Check a URL host: IP literals by address, names by spelling and the metadata deny list."""
    if (address := parse_ip(host)) is not None:
        check_address(address, allow_private=allow_private)
        return
    name = host.lower()
    if is_metadata_hostname(name):
        raise UnsafeURLError("blocked_address", f"{host} is a cloud metadata host name.")
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise UnsafeURLError("invalid_url", f"{host!r} is not a valid host name.")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):  # 2130706433, 0x7f.1, 127.1: legacy IPv4 spellings
        raise UnsafeURLError("invalid_url", f"{host} is a non-canonical numeric IPv4 address.")


def check_url(url: str | URL, settings: Settings) -> URL:
    """The parsed URL if the downloader may request it; otherwise raise `UnsafeURLError`."""
    text = str(url)
    if len(text) > MAX_URL_LENGTH:
        raise UnsafeURLError("invalid_url", f"The URL is longer than {MAX_URL_LENGTH} characters.")
    try:
        parsed = url if isinstance(url, URL) else URL(text)
        port = parsed.port
    except (ValueError, TypeError) as exc:
        raise UnsafeURLError("invalid_url", f"The URL cannot be parsed ({exc}).") from exc
    if parsed.scheme.lower() not in SCHEMES:
        raise UnsafeURLError("invalid_url", f"Only http and https URLs are fetched, not {parsed.scheme or 'none'!r}.")
    if parsed.user is not None or parsed.password is not None:
        raise UnsafeURLError("invalid_url", "URLs with a user name or password are refused.")
    if not parsed.raw_host:
        raise UnsafeURLError("invalid_url", "The URL has no host.")
    allow_private = settings.allow_private_addresses
    check_host(parsed.raw_host, allow_private=allow_private)
    if not allow_private and port not in settings.allowed_ports:
        raise UnsafeURLError("blocked_address", f"Port {port} is not one of the allowed ports.")
    return parsed


class SafeConnector(aiohttp.TCPConnector):
    """A `TCPConnector` that refuses to connect to any address `check_address` rejects.

    Every answer of the resolver (and every IP literal) is checked; if any fails, the request
    fails, and aiohttp connects only to the answers returned here.
    """

    def __init__(self, *, allow_private_addresses: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allow_private_addresses = allow_private_addresses

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        if is_metadata_hostname(host):  # before any DNS query
            raise UnsafeURLError("blocked_address", f"{host} is a cloud metadata host name.")
        results = await super()._resolve_host(host, port, traces=traces)
        for result in results:
            check_address(result["host"], allow_private=self.allow_private_addresses)
        return results


def redirect_guard(settings: Settings) -> ClientMiddlewareType:
    """A client middleware running `check_url` on every request aiohttp sends, redirects included."""

    async def guard(request: aiohttp.ClientRequest, handler: ClientHandlerType) -> aiohttp.ClientResponse:
        check_url(request.url, settings)
        if hdrs.AUTHORIZATION in request.headers:  # only a user:pass@ redirect target sets it
            raise UnsafeURLError("invalid_url", "A redirect target carried a user name or password.")
        return await handler(request)

    return guard
