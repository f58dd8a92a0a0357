"""Fetching external URLs safely: an SSRF guard on every connection, own redirects, limits and timeouts."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

REDIRECTS = (301, 302, 303, 307, 308)
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchRefused(Exception):
    """The URL, an address it resolves to, or the response breaks a rule; trying again will not help."""


class FetchFailed(Exception):
    """The fetch failed in a way that may pass (timeout, connection error, 5xx); worth another attempt."""


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why an address must not be fetched from by default (internal networks), or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that IPv4 host: judge the embedded address.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            reason = forbidden_reason(embedded)
            return f"{reason} (inside the IPv6 address {ip})" if reason else None
    checks = [
        ("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast), ("private", ip.is_private),
        ("shared (100.64.0.0/10)", isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED_ADDRESS_SPACE),
        ("reserved", ip.is_reserved), ("not globally routable", not ip.is_global),
    ]
    for name, hit in checks:
        if hit:
            return f"{ip} is a {name} address"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to for TCP on `port`, by the system resolver, duplicates removed, in its
    order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host itself, refuses internal addresses, and connects to the very address it checked.

    Because the check and the connection use one resolution, a name cannot change its answer between
    them (DNS rebinding). TLS still verifies and sends SNI for the host name, since only the socket's
    destination changes.
    """

    def __init__(self, allowed_hosts: Iterable[str] = (), *, resolver: Resolver = system_resolver,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.allowed_hosts = {_normal_host(h) for h in allowed_hosts}
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()

    async def checked_addresses(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        """The addresses `host` resolves to, all of them allowed; FetchRefused otherwise."""
        name = _normal_host(host)
        try:
            literal: IPAddress | None = ipaddress.ip_address(name)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = await asyncio.wait_for(self.resolver(name, port), timeout)
            except (OSError, TimeoutError) as exc:
                raise FetchFailed(f"the host name {name} could not be resolved: {exc}") from None
        if not addresses:
            raise FetchFailed(f"the host name {name} has no address")
        if name in self.allowed_hosts:
            return addresses
        for address in addresses:
            reason = forbidden_reason(ipaddress.ip_address(address.split("%", 1)[0]))
            if reason:
                shown = name if literal is not None else f"{name} resolves to {address}, which"
                raise FetchRefused(
                    f"refused to connect: {shown} is an internal address ({reason}); "
                    "list the host in INGEST_ALLOW_HOSTS to allow it")
        return addresses

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        """Connects to the first reachable address of `host` that passed the internal-address check (the check
        and the connection use the same resolved address, so DNS rebinding cannot slip through);
        raises FetchRefused for an internal address, or the last connect error."""
        addresses = await self.checked_addresses(host, port, timeout)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        """Always raises FetchRefused: ingestion never talks to local sockets."""
        raise FetchRefused("unix sockets are never fetched from")

    async def sleep(self, seconds: float) -> None:
        """Sleeps `seconds` through the wrapped backend."""
        await self.inner.sleep(seconds)


@dataclass(frozen=True)
class FetchLimits:
    """The bounds of one external fetch: `max_bytes` of body, redirects followed, and timeouts in seconds
    (connect, between reads, whole fetch)."""

    max_bytes: int
    max_redirects: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 600.0


@dataclass
class FetchedResponse:
    """A successful response whose body is still to be read, through `chunks()`, within the limits."""

    url: str  # the final URL, after redirects
    content_type: str | None
    content_length: int | None
    _stream: AsyncIterator[bytes]
    _max_bytes: int

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in chunks; raises FetchFailed as soon as more than the byte limit arrived or the stream
        breaks."""
        size = 0
        try:
            async for chunk in self._stream:
                size += len(chunk)
                if size > self._max_bytes:
                    raise FetchRefused(f"the content is larger than the limit of {self._max_bytes} bytes")
                yield chunk
        except httpcore.TimeoutException as exc:
            raise FetchFailed(f"reading the content timed out ({type(exc).__name__})") from None
        except (httpcore.NetworkError, httpcore.RemoteProtocolError) as exc:
            raise FetchFailed(f"the connection failed while reading the content: {exc or type(exc).__name__}") \
                from None
        if self.content_length is not None and size != self.content_length:
            raise FetchFailed(f"the content ended after {size} of {self.content_length} bytes")


def redacted(url: str) -> str:
    """A URL fit for messages and logs: no credentials, no query (presigned URLs carry secrets there)."""
    try:
        u = httpx.URL(url)
        port = f":{u.port}" if u.port else ""
        host = f"[{u.host}]" if ":" in u.host else u.host
        return f"{u.scheme}://{host}{port}{u.path}"
    except Exception:
        return "(an unparseable URL)"


def _path_segments(path: str) -> list[str] | None:
    """The path's segments after percent-decoding and removing dot segments (RFC 3986 section 5.2.4),
    with backslashes read as slashes as some servers do; None when `..` climbs above the root."""
    out: list[str] = []
    for segment in unquote(path).replace("\\", "/").split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not out:
                return None
            out.pop()
            continue
        out.append(segment)
    return out


def _origin(u: httpx.URL) -> tuple[str, str, int | None]:
    return u.scheme, _normal_host(u.host), u.port


def within_prefixes(url: str, prefixes: Iterable[str]) -> bool:
    """Whether `url` lies under one of `prefixes` (INGEST_ALLOW_PREFIXES): same scheme, host and port,
    and the prefix's path segments begin the URL's path once both are normalized. Dot segments, encoded
    or not, are resolved first, and matching is per whole segment, so `/media/../secret` and
    `/media-private` are not under `/media/`. An empty `prefixes` allows every URL."""
    listed = list(prefixes)
    if not listed:
        return True
    try:
        u = httpx.URL(url)
    except Exception:
        return False
    segments = _path_segments(u.path)
    if segments is None:
        return False
    for prefix in listed:
        try:
            p = httpx.URL(prefix)
        except Exception:
            continue
        wanted = _path_segments(p.path)
        if wanted is not None and _origin(p) == _origin(u) and segments[:len(wanted)] == wanted:
            return True
    return False


def check_url(url: str, allowed_hosts: set[str]) -> httpx.URL:
    """The URL parsed, when its form may be fetched: https, or http to an allowed host; no credentials."""
    try:
        u = httpx.URL(url)
    except Exception:
        raise FetchRefused(f"'{redacted(url)}' is not a valid URL") from None
    if u.scheme not in ("http", "https"):
        raise FetchRefused(f"only http and https URLs are fetched, not '{u.scheme}:'")
    if not u.host:
        raise FetchRefused("the URL has no host")
    if u.userinfo:
        raise FetchRefused("URLs with credentials (user:password@) are refused")
    if u.scheme == "http" and _normal_host(u.host) not in {_normal_host(h) for h in allowed_hosts}:
        raise FetchRefused(f"plain http is fetched only from hosts in INGEST_ALLOW_HOSTS, not {u.host}")
    return u


class Fetcher:
    """GET external URLs through the guard, following redirects itself, within size and time limits."""

    def __init__(self, limits: FetchLimits, allowed_hosts: Iterable[str] = (), *,
                 resolver: Resolver = system_resolver, inner: httpcore.AsyncNetworkBackend | None = None,
                 user_agent: str = "fhirvault-ingest", ssl_context: ssl.SSLContext | None = None,
                 allowed_prefixes: Iterable[str] = ()) -> None:
        self.limits = limits
        self.allowed_prefixes = tuple(allowed_prefixes)
        self.ssl_context = ssl_context
        self.allowed_hosts = {_normal_host(h) for h in allowed_hosts}
        self.backend = GuardedNetworkBackend(self.allowed_hosts, resolver=resolver, inner=inner)
        self.user_agent = user_agent

    @asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[FetchedResponse]:
        """The final response of `url` after redirects; read it with `chunks()` inside the block.
        FetchRefused for what breaks a rule, FetchFailed for what may pass. The caller bounds the
        whole job with the total timeout (see `deadline`)."""
        lim = self.limits
        timeouts = {"connect": lim.connect_timeout, "read": lim.read_timeout, "write": lim.read_timeout,
                     "pool": lim.connect_timeout}
        async with httpcore.AsyncConnectionPool(network_backend=self.backend, ssl_context=self.ssl_context,
                                                retries=0, max_connections=1) as pool:
            current = url
            for hop in range(lim.max_redirects + 1):
                u = check_url(current, self.allowed_hosts)
                if not within_prefixes(current, self.allowed_prefixes):
                    # Checked on every hop: a redirect must not lead out of the allowed prefixes.
                    raise FetchRefused(f"{redacted(current)} is outside INGEST_ALLOW_PREFIXES")
                target = httpcore.URL(scheme=u.raw_scheme, host=u.raw_host, port=u.port, target=u.raw_path)
                headers = [(b"Host", _host_header(u)), (b"User-Agent", self.user_agent.encode()),
                           (b"Accept", b"*/*"), (b"Accept-Encoding", b"identity")]
                try:
                    async with pool.stream("GET", target, headers=headers,
                                           extensions={"timeout": timeouts}) as response:
                        answer = httpx.Headers(response.headers)
                        if response.status in REDIRECTS:
                            location = answer.get("location")
                            if not location:
                                raise FetchRefused(f"{redacted(current)} answered {response.status} without a Location")
                            if hop == lim.max_redirects:
                                raise FetchRefused(f"more than {lim.max_redirects} redirects, the last to "
                                                   f"{redacted(str(u.join(location)))}")
                            current = str(u.join(location))
                            continue
                        _check_status(response.status, current)
                        length = _content_length(answer)
                        if length is not None and length > lim.max_bytes:
                            raise FetchRefused(f"the content is {length} bytes, over the limit of "
                                               f"{lim.max_bytes} bytes")
                        yield FetchedResponse(current, answer.get("content-type") or None, length,
                                              response.aiter_stream(), lim.max_bytes)
                        return
                except httpcore.TimeoutException as exc:
                    raise FetchFailed(f"{redacted(current)}: {_timeout_kind(exc)} timed out") from None
                except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
                    raise FetchFailed(f"{redacted(current)}: {type(exc).__name__}: {exc}") from None
            raise AssertionError("unreachable")  # pragma: no cover


def _host_header(u: httpx.URL) -> bytes:
    host = b"[" + u.raw_host + b"]" if b":" in u.raw_host else u.raw_host
    return host if u.port is None else host + b":" + str(u.port).encode()


def _timeout_kind(exc: Exception) -> str:
    return {"ConnectTimeout": "connecting", "ReadTimeout": "reading", "WriteTimeout": "writing",
            "PoolTimeout": "waiting for a connection"}.get(type(exc).__name__, "the request")


def _check_status(status: int, url: str) -> None:
    if 200 <= status < 300:
        return
    message = f"{redacted(url)} answered HTTP {status}"
    if status in (408, 425, 429) or status >= 500:
        raise FetchFailed(message)
    raise FetchRefused(message)


def _content_length(headers: httpx.Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise FetchRefused(f"the response's Content-Length {value!r} is not a number")
    return int(value)


@asynccontextmanager
async def deadline(seconds: float, what: str) -> AsyncIterator[None]:
    """Bound a whole job; FetchFailed when it runs over."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise FetchFailed(f"{what} took longer than the total timeout of {seconds:g}s") from None
