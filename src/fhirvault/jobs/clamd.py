"""ClamAV's clamd as a Scanner: its INSTREAM command over TCP or a Unix socket (clamd(8), "INSTREAM").

Why our own client: the maintained async library (aioclamd) speaks TCP only, reads from a synchronous file
object in a thread 1 KiB at a time, and has no way to feed it the async chunk streams our blob stores give;
the protocol is small (a command, length-prefixed chunks, a zero-length end, one reply line).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from urllib.parse import urlsplit

from fhirvault.jobs.scanner import ScannerUnavailable, Verdict

# clamd reads each INSTREAM chunk into one buffer; chunks stay well below any StreamMaxLength.
CHUNK_BYTES = 256 * 1024
# The reply is one short line ("stream: OK", "stream: Eicar-Signature FOUND", "... ERROR").
MAX_REPLY_BYTES = 64 * 1024
TOO_LARGE_REPLY = "INSTREAM size limit exceeded"


class ClamdScanner:
    """Scanner backed by clamd at `url` (`tcp://host:port` or `unix:///path`); every call opens its own
    connection (clamd serves one command per connection), and the whole call is bounded by `timeout`
    seconds. ValueError for a URL of another shape."""

    name = "clamd"

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        parts = urlsplit(url)
        if parts.scheme == "tcp" and parts.hostname and parts.port:
            self._tcp: tuple[str, int] | None = (parts.hostname, parts.port)
            self._unix: str | None = None
        elif parts.scheme == "unix" and parts.path:
            self._tcp, self._unix = None, parts.path
        else:
            raise ValueError(f"clamd URL {url!r} must be tcp://host:port or unix:///path")
        self.url = url
        self.timeout = timeout

    async def ping(self) -> None:
        """Sends clamd's PING; raises ScannerUnavailable unless it answers PONG within the timeout."""
        reply = await self._bounded(self._command(b"zPING\0"))
        if reply != "PONG":
            raise ScannerUnavailable(f"clamd at {self.url} answered PING with {reply!r}")

    async def version(self) -> str:
        """clamd's version line, e.g. 'ClamAV 1.0.7/...'."""
        return await self._bounded(self._command(b"zVERSION\0"))

    async def scan(self, chunks: AsyncIterator[bytes]) -> Verdict:
        """Stream the bytes to clamd (INSTREAM) and parse its verdict. ScannerUnavailable when clamd cannot be
        reached, drops the connection or answers an error (other than its size limit: `too_large`)."""
        reply = await self._bounded(self._instream(chunks))
        if reply.startswith(TOO_LARGE_REPLY) or reply.endswith(f"{TOO_LARGE_REPLY}. ERROR"):
            return Verdict(infected=False, too_large=True)
        # "stream: OK" | "stream: <signature> FOUND" | "<message> ERROR"
        _, _, rest = reply.partition(": ")
        if rest == "OK":
            return Verdict(infected=False)
        if rest.endswith(" FOUND"):
            return Verdict(infected=True, signature=rest[: -len(" FOUND")].strip() or "unknown")
        raise ScannerUnavailable(f"clamd at {self.url} answered {reply[:200]!r}")

    async def _bounded(self, call: Coroutine[Any, Any, str]) -> str:
        try:
            return await asyncio.wait_for(call, self.timeout)
        except TimeoutError:
            raise ScannerUnavailable(f"clamd at {self.url} did not answer within {self.timeout:g} s") from None

    async def _command(self, command: bytes) -> str:
        loop = asyncio.get_running_loop()
        sock = await self._open_socket()
        try:
            await loop.sock_sendall(sock, command)
            return await _socket_reply(sock, self.url)
        except OSError as exc:
            raise ScannerUnavailable(f"clamd at {self.url} failed: {exc}") from None
        finally:
            sock.close()

    async def _open_socket(self) -> socket.socket:
        """A connected non-blocking socket to clamd; ScannerUnavailable when it cannot be reached."""
        loop = asyncio.get_running_loop()
        try:
            address: Any
            if self._unix is not None:
                family, address = socket.AF_UNIX, self._unix
            else:
                assert self._tcp is not None
                family, _, _, _, address = (await loop.getaddrinfo(*self._tcp, type=socket.SOCK_STREAM))[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
            except BaseException:
                sock.close()
                raise
            return sock
        except OSError as exc:
            raise ScannerUnavailable(f"clamd at {self.url} is not reachable: {exc}") from None

    async def _instream(self, chunks: AsyncIterator[bytes]) -> str:
        # A plain socket rather than asyncio streams: clamd answers and hangs up as soon as a stream passes its
        # StreamMaxLength, and its answer is still in our receive buffer after the next send fails; a stream
        # transport would drop it when the write fails.
        loop = asyncio.get_running_loop()
        sock = await self._open_socket()
        try:
            try:
                await loop.sock_sendall(sock, b"zINSTREAM\0")
                async for chunk in chunks:
                    for offset in range(0, len(chunk), CHUNK_BYTES):
                        piece = chunk[offset:offset + CHUNK_BYTES]
                        await loop.sock_sendall(sock, struct.pack("!L", len(piece)) + piece)
                        if _readable(sock):
                            return await _socket_reply(sock, self.url)
                await loop.sock_sendall(sock, struct.pack("!L", 0))
            except OSError as exc:
                # clamd hung up mid-stream: it may have said why (its size limit) before closing.
                try:
                    return await _socket_reply(sock, self.url)
                except ScannerUnavailable:
                    raise ScannerUnavailable(f"clamd at {self.url} closed the connection during the scan: "
                                             f"{exc}") from None
            return await _socket_reply(sock, self.url)
        finally:
            sock.close()


def _readable(sock: socket.socket) -> bool:
    """Whether the peer sent something (or closed) already, without waiting."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # a byte, or b"" at the end: either way, done
        return True
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


async def _socket_reply(sock: socket.socket, url: str) -> str:
    """One NUL-terminated reply read from a plain socket, or what came before it closed."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    while b"\0" not in data and len(data) < MAX_REPLY_BYTES:
        try:
            piece = await loop.sock_recv(sock, 4096)
        except OSError:
            break
        if not piece:
            break
        data += piece
    text = bytes(data).split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    if not text:
        raise ScannerUnavailable(f"clamd at {url} closed the connection without a reply")
    return text
