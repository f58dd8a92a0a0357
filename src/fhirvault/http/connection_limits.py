"""Limits on what one HTTP connection may cost the server: header size, header read time, body idle time.

uvicorn's httptools protocol, extended: a client that sends headers larger than MAX_HEADER_BYTES gets
431, one that takes longer than HEADER_TIMEOUT_SECONDS to send its request line and headers gets 408,
and a request body that goes BODY_IDLE_TIMEOUT_SECONDS without a byte arriving has its connection
closed (the request sees a client disconnect, so an upload leaves nothing behind). A trickling client
(1 byte per second) can therefore hold a connection only for a bounded time. Its access log lines are
written by `access_log.AccessLog`, the cheaper stand-in for uvicorn's access logger, and the head of an
answer leaves together with the start of its body (`HeadWithBody`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fhirvault.config import Settings
from fhirvault.fhir.outcome import operation_outcome
from fhirvault.http.access_log import AccessLog
from fhirvault.http.response_date import ResponseDate

log = logging.getLogger("fhirvault.http")


@functools.lru_cache(maxsize=1)
def _access_log() -> AccessLog:
    """One per process, made once uvicorn has configured logging (protocols exist only after that)."""
    return AccessLog(logging.getLogger("uvicorn.access"))


@functools.lru_cache(maxsize=1)
def _limits() -> tuple[int, float, float]:
    """(max header bytes, header timeout s, body idle timeout s), from the settings of this process."""
    settings = Settings()
    return settings.max_header_bytes, settings.header_timeout_seconds, settings.body_idle_timeout_seconds


class LimitedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with the three limits above; used by `fhirvault serve` (uvicorn `http=`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_logger = _access_log()  # type: ignore[assignment]
        self.max_header_bytes, self.header_timeout, self.body_idle_timeout = _limits()
        self._awaiting_headers = True
        self._header_bytes = 0        # bytes received since the request began, while its headers last
        self._header_size = 0         # request target + header names and values parsed so far
        self._rejected = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._last_body_at = 0.0

    # -- connection ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: the header timer starts, so a client that never sends a request line is dropped."""
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection closed: stop both timers before uvicorn tears the protocol down."""
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Counts the bytes of a request whose headers are still arriving and answers 431 once they exceed
        MAX_HEADER_BYTES, before the parser buffers more."""
        if self._rejected:
            return
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._rejected or (self._awaiting_headers and self._header_bytes > self.max_header_bytes):
            self._refuse(431, "Request Header Fields Too Large",
                         f"The request line and headers exceed {self.max_header_bytes} bytes (MAX_HEADER_BYTES)")

    # -- parser callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        """A request begins: its header size starts at zero and the header timer runs."""
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_size = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        """Counts the request target toward the header limit."""
        self._header_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Counts one header line (name, value and separators) toward the header limit."""
        self._header_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Headers done: stop the header timer, refuse with 431 when they were too large, otherwise hand the
        request on and start the body idle timer (BODY_IDLE_TIMEOUT seconds between body pieces)."""
        self._awaiting_headers = False
        self._header_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._header_size > self.max_header_bytes:
            self._rejected = True  # answered by data_received once the parser returns
            return
        super().on_headers_complete()
        if self.cycle is not None and not isinstance(self.cycle.transport, HeadWithBody):
            self.cycle.transport = HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]
        if self.cycle is not None:
            self.cycle.default_headers = ResponseDate(self.cycle.default_headers)
        self._last_body_at = self.loop.time()
        self._body_timer = self.loop.call_later(self.body_idle_timeout, self._check_body_idle)

    def on_body(self, body: bytes) -> None:
        """A body piece arrived: the idle timer restarts from now."""
        if self._rejected:
            return
        self._last_body_at = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        """The body is complete: the idle timer stops."""
        if self._rejected:
            return
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # -- limits -------------------------------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_time_up)

    def _header_time_up(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            if self._header_bytes == 0 and self.cycle is not None:
                return  # an idle keep-alive connection: uvicorn's keep-alive timeout owns it
            self._refuse(408, "Request Timeout", f"The request headers did not arrive within "
                                                 f"{self.header_timeout:g} s (HEADER_TIMEOUT_SECONDS)")

    def _check_body_idle(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        idle = self.loop.time() - self._last_body_at
        if self.flow.read_paused or idle < self.body_idle_timeout:
            # Reading is paused because the application is busy with what came: not the client's fault.
            wait = self.body_idle_timeout if self.flow.read_paused else self.body_idle_timeout - idle
            self._body_timer = self.loop.call_later(wait, self._check_body_idle)
            return
        log.warning("closing a connection from %s: no request body bytes for %g s (BODY_IDLE_TIMEOUT_SECONDS)",
                    self.client[0] if self.client else "?", self.body_idle_timeout)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser could not read (a raw non-ASCII byte in the request line, a malformed
        header): uvicorn answered it in plain text; errors are OperationOutcomes everywhere."""
        self._refuse(400, "Bad Request", "The request is not valid HTTP/1.1 and was not read: " + msg.rstrip(".")
                     + " (a raw non-ASCII character in the URL, for one: %-encode it as UTF-8, Sévère as "
                       "S%C3%A9v%C3%A8re)")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer a request the application never saw with an OperationOutcome, and close the connection."""
        self._rejected = True
        self._cancel_timers()
        if self.transport.is_closing():
            return
        code = {431: "too-long", 400: "structure"}.get(status, "timeout")
        body = json.dumps(operation_outcome(message, code=code)).encode()
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/fhir+json; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode("ascii") + body)
        self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None


class HeadWithBody:
    """The transport as one request's answer sees it: its first write (the status line and headers) is held
    until the next write (the body, or its first chunk), and both go out in one system call, instead of a
    packet and a wake-up of the client each. A head that no write follows in the same turn of the event
    loop (a streamed body whose first chunk is not ready) goes out at the end of that turn."""

    __slots__ = ("_transport", "_loop", "_held", "_first")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        """Holds the first write (the head); sends it along with the next one."""
        if self._first:
            self._first = False
            self._held = data
            self._loop.call_soon(self._flush)
            return
        held, self._held = self._held, None
        if held is None:
            self._transport.write(data)
        else:
            self._transport.writelines((held, data))

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        """Sends a head still held, then closes the connection."""
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        """Whether the connection is closing or closed."""
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
