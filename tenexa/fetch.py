"""The worker's one HTTP client for URLs a caller sends (``image_url``, LoRA URLs), with an SSRF guard.

For the first request and for every redirect hop:

1. the URL must be http(s), name a host and carry no credentials;
2. the host is resolved ONCE, and every address it resolves to must be public (unless ``allow_private``);
3. the connection goes to one of exactly those addresses: a urllib3 pool opened on the IP literal, with the
   URL's host name sent as ``Host`` and, for https, used for SNI and for the certificate check. Nothing
   resolves the name a second time, so a DNS answer that changes after the check (rebinding) is never used.

The body streams into a caller's sink under a byte cap and a whole-download deadline (connect to last byte).
Proxies from the environment are never used: they would connect somewhere the check did not look at.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit

import certifi
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ProtocolError, ReadTimeoutError, SSLError

from tenexa.config import Settings
from tenexa.errors import ErrorCode, TenexaError

MAX_REDIRECTS = 3
CHUNK = 64 * 1024
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known prefix: the last 32 bits are an IPv4 address
_USER_AGENT = "tenexa-worker"

Resolver = Callable[[str, int], Sequence[str]]
Sink = Callable[[bytes], None]


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for TCP, in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class UrlPolicy:
    """Where a fetch may connect. ``resolver`` and ``ca_certs`` exist so tests can stand in for DNS and a CA."""

    allow_private: bool = False
    resolver: Resolver = system_resolver
    ca_certs: str | None = None  # PEM bundle for https; None: certifi's, the bundle requests uses

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        return cls(allow_private=settings.allow_private_urls)


@dataclass(frozen=True)
class FetchCodes:
    """The documented code each failure gets, per kind of download (images and LoRAs have their own)."""

    failed: ErrorCode
    too_large: ErrorCode


IMAGE_CODES = FetchCodes(ErrorCode.IMAGE_FETCH_FAILED, ErrorCode.IMAGE_TOO_LARGE)


# ------------------------------------------------------------------------------------------------ the guard


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64): each must pass the check too."""
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def is_public(address_text: str) -> bool:
    """A global unicast address, and so is any IPv4 address embedded in it."""
    try:
        address = ipaddress.ip_address(address_text.split("%", 1)[0])
    except ValueError:
        return False
    candidates = [address, *(_embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else [])]
    return all(a.is_global and not a.is_multicast for a in candidates)


@dataclass(frozen=True)
class Hop:
    """One request's target: the parsed URL, its ASCII host name, and the checked addresses to connect to."""

    parts: SplitResult
    host: str
    port: int
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.parts.port is None else f"{host}:{self.port}"

    @property
    def target(self) -> str:
        path = self.parts.path or "/"
        return f"{path}?{self.parts.query}" if self.parts.query else path


def check_hop(url: str, field: str, policy: UrlPolicy, codes: FetchCodes) -> Hop:
    """Validate the URL and resolve its host once; every address must pass (URL_BLOCKED otherwise)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TenexaError(ErrorCode.URL_BLOCKED, f"{field}: not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise TenexaError(ErrorCode.URL_BLOCKED, f"{field}: only http and https URLs are allowed")
    if not parts.hostname:
        raise TenexaError(ErrorCode.URL_BLOCKED, f"{field}: URL has no host")
    if parts.username or parts.password:
        raise TenexaError(ErrorCode.URL_BLOCKED, f"{field}: credentials in URLs are not allowed")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
        addresses = tuple(policy.resolver(host, port))
    except (OSError, UnicodeError):
        addresses = ()
    if not addresses:
        raise TenexaError(codes.failed, f"{field}: host {parts.hostname!r} does not resolve")
    if not policy.allow_private and not all(is_public(a) for a in addresses):
        raise TenexaError(
            ErrorCode.URL_BLOCKED,
            f"{field}: {parts.hostname} resolves to a non-public address; set ALLOW_PRIVATE_URLS=true to allow it",
        )
    return Hop(parts, host, port, addresses)


# ------------------------------------------------------------------------------------------------ fetching


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason for a transport failure (the URL itself never goes into messages)."""
    if isinstance(exc, SSLError):
        return "TLS handshake or certificate check failed"
    if isinstance(exc, NewConnectionError):
        return "could not connect"
    if isinstance(exc, ConnectTimeoutError):
        return "connect timed out"
    if isinstance(exc, ReadTimeoutError):
        return "read timed out"
    if isinstance(exc, ProtocolError):
        return "connection broken"
    return type(exc).__name__


def _pool(hop: Hop, address: str, policy: UrlPolicy) -> urllib3.HTTPConnectionPool:
    """A one-connection pool on the checked IP literal; for https the certificate must name the URL's host."""
    if hop.parts.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            address, hop.port, maxsize=1, retries=False, cert_reqs="CERT_REQUIRED",
            ca_certs=policy.ca_certs or certifi.where(), server_hostname=hop.host, assert_hostname=hop.host,
        )
    return urllib3.HTTPConnectionPool(address, hop.port, maxsize=1, retries=False)


def _request(hop: Hop, field: str, policy: UrlPolicy, codes: FetchCodes, deadline: float, timeout: float):
    """GET the hop from its checked addresses in order (the next one only when connecting fails)."""
    failure: BaseException | None = None
    for address in hop.addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        pool = _pool(hop, address, policy)
        try:
            response = pool.urlopen(
                "GET", hop.target, redirect=False, retries=False, preload_content=False,
                headers={"Host": hop.host_header, "User-Agent": _USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"},
                timeout=urllib3.Timeout(connect=min(5.0, remaining), read=min(10.0, remaining)),
            )
            return pool, response
        except (NewConnectionError, ConnectTimeoutError) as exc:  # try the next address
            pool.close()
            failure = exc
        except HTTPError as exc:
            pool.close()
            raise TenexaError(codes.failed, f"{field}: download failed ({_reason(exc)})") from None
    if failure is None:
        raise TenexaError(codes.failed, f"{field}: download took longer than {timeout:g} s")
    raise TenexaError(codes.failed, f"{field}: download failed ({_reason(failure)})")


def fetch(url: str, field: str, sink: Sink, *, max_bytes: int, timeout: float, codes: FetchCodes, policy: UrlPolicy) -> int:
    """Stream the body of ``url`` into ``sink``; returns the number of bytes. The guard applies to every hop.

    ``sink`` may raise ``TenexaError`` to stop the download (e.g. a LoRA whose header is already wrong).
    """
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        hop = check_hop(url, field, policy, codes)
        pool, response = _request(hop, field, policy, codes, deadline, timeout)
        try:
            location = response.headers.get("location")
            if response.status in _REDIRECT_STATUSES and location:
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise TenexaError(codes.failed, f"{field}: server answered HTTP {response.status}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise TenexaError(codes.too_large, f"{field}: {declared} bytes; the limit is {max_bytes}")
            return _stream(response, field, sink, max_bytes=max_bytes, deadline=deadline, timeout=timeout, codes=codes)
        finally:
            response.close()  # never back into a pool: the pool is per hop and closed here
            pool.close()
    raise TenexaError(codes.failed, f"{field}: more than {MAX_REDIRECTS} redirects")


def _stream(response, field: str, sink: Sink, *, max_bytes: int, deadline: float, timeout: float, codes: FetchCodes) -> int:
    total = 0
    try:
        while chunk := response.read1(CHUNK):  # read1: whatever has arrived, so the deadline is checked often
            total += len(chunk)
            if total > max_bytes:
                raise TenexaError(codes.too_large, f"{field}: more than {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise TenexaError(codes.failed, f"{field}: download took longer than {timeout:g} s")
            sink(chunk)
    except HTTPError as exc:
        raise TenexaError(codes.failed, f"{field}: download failed ({_reason(exc)})") from None
    except OSError as exc:  # a socket error urllib3 did not wrap
        raise TenexaError(codes.failed, f"{field}: download failed ({type(exc).__name__})") from None
    return total


def fetch_bytes(url: str, field: str, *, max_bytes: int, timeout: float, codes: FetchCodes, policy: UrlPolicy) -> bytes:
    """The whole body in memory (images: a few MB at most)."""
    buf = bytearray()
    fetch(url, field, buf.extend, max_bytes=max_bytes, timeout=timeout, codes=codes, policy=policy)
    return bytes(buf)
