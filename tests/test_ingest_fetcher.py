"""The SSRF guard and the streaming fetcher, against local origins and a recording network backend."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any

import httpcore
import pytest

from fhirvault.jobs.fetcher import (
    FetchedResponse,
    Fetcher,
    FetchFailed,
    FetchLimits,
    FetchRefused,
    GuardedNetworkBackend,
    check_url,
    forbidden_reason,
    redacted,
)
from tests.support.origin import CountingListener, OriginServer, content_chunks

FORBIDDEN = [
    "127.0.0.1", "127.255.0.7", "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1", "100.127.255.254",
    "169.254.169.254", "169.254.0.1", "224.0.0.1", "239.1.2.3", "0.0.0.0", "240.0.0.1", "255.255.255.255",
    "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "::ffff:169.254.169.254", "2002:7f00:1::1", "64:ff9b::a00:1", "::127.0.0.1",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_internal_addresses_are_forbidden(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands in for the network: records every connection attempt and answers with canned bytes."""

    def __init__(self, answer: list[bytes] | None = None) -> None:
        self.connects: list[tuple[str, int]] = []
        self.answer = answer or [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        return httpcore.AsyncMockStream(list(self.answer))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def fake_dns(table: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        return table[host]
    return resolve


LIMITS = FetchLimits(max_bytes=1 << 20, max_redirects=3, connect_timeout=5, read_timeout=5, total_timeout=30)


async def _fetch(fetcher: Fetcher, url: str) -> tuple[FetchedResponse, bytes]:
    async with fetcher.open(url) as response:
        body = b"".join([c async for c in response.chunks()])
    return response, body


@pytest.mark.parametrize("url", [
    "https://10.0.0.1/a", "https://169.254.169.254/latest/meta-data/", "https://[fe80::1]/x",
    "https://[::ffff:10.0.0.1]/x", "https://internal.example/x", "https://metadata.example/x",
    "https://mixed.example/x", "https://100.64.1.1/x", "https://[fd00::1]/x",
])
def test_guard_refuses_before_any_connection(url: str) -> None:
    """Addresses outside loopback are judged without traffic: the network backend records no attempt."""
    net = RecordingBackend()
    dns = fake_dns({"internal.example": ["10.1.2.3"], "metadata.example": ["169.254.169.254"],
                    "mixed.example": ["93.184.216.34", "192.168.0.10"]})
    fetcher = Fetcher(LIMITS, resolver=dns, inner=net)
    with pytest.raises(FetchRefused, match="internal address"):
        asyncio.run(_fetch(fetcher, url))
    assert net.connects == []


def test_guard_connects_to_the_address_it_checked_and_keeps_the_host_name() -> None:
    """A public name is connected by the resolved address (no second lookup), Host stays the name."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # a rebinding resolver: second answer is loopback

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    net = RecordingBackend()
    fetcher = Fetcher(LIMITS, resolver=rebinding, inner=net)
    response, body = asyncio.run(_fetch(fetcher, "https://files.example/a.bin"))
    assert body == b"ok"
    assert net.connects == [("93.184.216.34", 443)]


def test_redirect_from_public_host_to_loopback_is_refused_before_connecting() -> None:
    net = RecordingBackend([b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/secret\r\n"
                            b"Content-Length: 0\r\n\r\n"])
    fetcher = Fetcher(LIMITS, ["127.0.0.2"], resolver=fake_dns({"files.example": ["93.184.216.34"]}), inner=net)
    with pytest.raises(FetchRefused, match="plain http"):
        asyncio.run(_fetch(fetcher, "https://files.example/a"))
    net2 = RecordingBackend([b"HTTP/1.1 302 Found\r\nLocation: https://localhost/secret\r\nContent-Length: 0\r\n\r\n"])
    fetcher2 = Fetcher(LIMITS, resolver=fake_dns({"files.example": ["93.184.216.34"], "localhost": ["127.0.0.1"]}),
                       inner=net2)
    with pytest.raises(FetchRefused, match="localhost resolves to 127.0.0.1"):
        asyncio.run(_fetch(fetcher2, "https://files.example/a"))
    assert net.connects == [("93.184.216.34", 443)] and net2.connects == [("93.184.216.34", 443)]


@pytest.mark.parametrize("url,message", [
    ("ftp://files.example/a", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
    ("https://user:secret@files.example/a", "credentials"),
    ("http://files.example/a", "plain http"),
])
def test_url_forms_refused(url: str, message: str) -> None:
    with pytest.raises(FetchRefused, match=message) as info:
        check_url(url, set())
    assert "secret" not in str(info.value)


def test_redacted_url_hides_credentials_and_query() -> None:
    shown = redacted("https://u:pw@files.example:8443/a/b.png?X-Amz-Signature=abc")
    assert shown == "https://files.example:8443/a/b.png"


# -- against real local origins (127.0.0.1 allowed the way INGEST_ALLOW_HOSTS allows it) -----------
def test_default_guard_refuses_loopback_names_and_literals_without_connecting() -> None:
    with CountingListener("127.0.0.1") as v4, CountingListener("::1") as v6:
        fetcher = Fetcher(LIMITS)
        for url in [f"https://127.0.0.1:{v4.port}/a", f"https://localhost:{v4.port}/a",
                    f"https://[::1]:{v6.port}/a", f"https://[::ffff:127.0.0.1]:{v4.port}/a"]:
            with pytest.raises(FetchRefused, match="internal address"):
                asyncio.run(_fetch(fetcher, url))
        assert v4.connections() == 0 and v6.connections() == 0


def test_fetch_streams_a_file_with_its_content_type() -> None:
    with OriginServer() as origin:
        fetcher = Fetcher(LIMITS, ["127.0.0.1"])
        response, body = asyncio.run(_fetch(fetcher, f"{origin.url}/file/300000?type=image/png&seed=3"))
    assert response.content_type == "image/png"
    assert hashlib.sha1(body).digest() == hashlib.sha1(b"".join(content_chunks(300000, 3))).digest()
    assert origin.hosts == [f"127.0.0.1:{origin.server_address[1]}"]


def test_redirect_chain_is_followed_and_checked_every_hop() -> None:
    with OriginServer() as origin:
        fetcher = Fetcher(LIMITS, ["127.0.0.1"])
        response, body = asyncio.run(_fetch(fetcher, f"{origin.url}/redirect/3/file/1000"))
        assert len(body) == 1000 and response.url.endswith("/file/1000")
        with pytest.raises(FetchRefused, match="more than 3 redirects"):
            asyncio.run(_fetch(fetcher, f"{origin.url}/redirect/4/file/1000"))
        assert origin.requests["/file/1000"] == 1


def test_redirect_to_a_host_not_allowed_is_refused_without_contact() -> None:
    with OriginServer() as origin, CountingListener() as trap:
        fetcher = Fetcher(LIMITS, ["127.0.0.1"])
        with pytest.raises(FetchRefused):
            asyncio.run(_fetch(fetcher, f"{origin.url}/to?url=http://localhost:{trap.port}/x"))
        with pytest.raises(FetchRefused, match="internal address"):
            asyncio.run(_fetch(fetcher, f"{origin.url}/to?url=https://localhost:{trap.port}/x"))
        assert trap.connections() == 0


def test_oversized_content_stops_early() -> None:
    small = FetchLimits(max_bytes=100_000, read_timeout=5)
    with OriginServer() as origin:
        fetcher = Fetcher(small, ["127.0.0.1"])
        with pytest.raises(FetchRefused, match="over the limit"):
            asyncio.run(_fetch(fetcher, f"{origin.url}/file/50000000"))

        seen = 0

        async def read_unannounced() -> None:
            nonlocal seen
            async with fetcher.open(f"{origin.url}/file/50000000?length=no") as response:
                async for chunk in response.chunks():
                    seen += len(chunk)

        with pytest.raises(FetchRefused, match="larger than the limit"):
            asyncio.run(read_unannounced())
    assert seen <= 100_000


def test_slow_origin_times_out_and_errors_are_transient() -> None:
    quick = FetchLimits(max_bytes=1 << 20, read_timeout=0.5)
    with OriginServer() as origin:
        fetcher = Fetcher(quick, ["127.0.0.1"])
        with pytest.raises(FetchFailed, match="timed out"):
            asyncio.run(_fetch(fetcher, f"{origin.url}/slow"))
        with pytest.raises(FetchFailed, match="HTTP 500"):
            asyncio.run(_fetch(fetcher, f"{origin.url}/status/500"))
        with pytest.raises(FetchRefused, match="HTTP 404"):
            asyncio.run(_fetch(fetcher, f"{origin.url}/status/404"))


def test_resolution_is_done_by_the_guard_for_allowed_names() -> None:
    """An allowed host name may resolve to loopback; the connection goes to the address resolved."""
    with OriginServer() as origin:
        port = origin.server_address[1]
        fetcher = Fetcher(LIMITS, ["files.internal"], resolver=fake_dns({"files.internal": ["127.0.0.1"]}))
        _, body = asyncio.run(_fetch(fetcher, f"http://files.internal:{port}/file/10"))
    assert len(body) == 10 and origin.hosts == [f"files.internal:{port}"]


def test_guard_backend_refuses_unix_sockets() -> None:
    with pytest.raises(FetchRefused):
        asyncio.run(GuardedNetworkBackend().connect_unix_socket("/run/x.sock"))


def test_tls_is_verified_for_the_host_name_while_connecting_to_the_checked_address() -> None:
    """The connection goes to the resolved address, yet SNI and certificate checks use the URL's name."""
    import ssl

    import trustme

    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("files.test").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    dns = fake_dns({"files.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    with OriginServer(tls=server_tls) as origin:
        port = origin.server_address[1]
        fetcher = Fetcher(LIMITS, ["files.test", "other.test"], resolver=dns, ssl_context=client_tls)
        response, body = asyncio.run(_fetch(fetcher, f"https://files.test:{port}/file/1000"))
        assert len(body) == 1000 and origin.hosts == [f"files.test:{port}"]
        with pytest.raises(FetchFailed, match="CERTIFICATE_VERIFY_FAILED|certificate"):
            asyncio.run(_fetch(fetcher, f"https://other.test:{port}/file/1000"))
