"""Request bodies sent with a `Content-Encoding`: decoded (gzip, deflate, br) for every endpoint, in bounded
pieces; any other coding is refused with 415."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Protocol

import brotli
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhirvault.errors import Invalid, TooLarge, Unsupported
from fhirvault.http.responses import error_response

# Largest piece of decoded output made from one piece of input: a small, highly compressed body (a
# "zip bomb") is decoded a piece at a time and counted, never inflated whole.
DECODED_PIECE = 1024 * 1024
SUPPORTED = ("gzip", "x-gzip", "deflate", "br")


class Decoder(Protocol):
    """One content coding's decoder (RFC 9110 8.4.1): decoded bytes come out in pieces of at most
    DECODED_PIECE; Invalid for input that is not of that coding or ends too soon."""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decodes the next piece of the encoded body, yielding decoded pieces; raises Invalid for input that
        is not of this coding."""

    def finish(self) -> None:
        """Invalid unless the whole encoded stream has been fed."""


class ZlibDecoder:
    """gzip (RFC 1952) or deflate: the zlib format (RFC 1950) that HTTP names `deflate`, or the raw
    DEFLATE stream some clients send under that name (told apart by the zlib header's checksum)."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._inflater: zlib._Decompress | None = None
        if coding != "deflate":
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._head = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decodes the next piece of a gzip or deflate body (several gzip members one after another allowed),
        yielding decoded pieces of at most DECODED_PIECE bytes; raises Invalid for a corrupt stream
        or bytes after a deflate stream's end."""
        if self._inflater is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            is_zlib = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS)
        inflater = self._inflater
        try:
            while data:
                if inflater.eof:
                    # Bytes after the end of the stream: a gzip body may be several members (RFC 1952 2.2,
                    # what `cat a.gz b.gz` makes), decoded one after another; anything else is not of the
                    # coding, and dropping it would store less than was sent.
                    if self.coding == "deflate":
                        raise Invalid("The deflate-encoded request body goes on after the end of its stream")
                    inflater = self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out = inflater.decompress(data, DECODED_PIECE)
                if out:
                    yield out
                data = inflater.unconsumed_tail or inflater.unused_data
        except zlib.error as exc:
            raise Invalid(f"The {self.coding}-encoded request body cannot be decoded: {exc}") from None

    def finish(self) -> None:
        """Raises Invalid unless the stream ended properly (a truncated body would otherwise be stored short)."""
        if self._inflater is None or not self._inflater.eof:
            raise Invalid(f"The {self.coding}-encoded request body is truncated")


class BrotliDecoder:
    """br (RFC 7932), through the brotli library, whose output per call is bounded too (softly: a piece may
    reach about twice DECODED_PIECE)."""

    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decodes the next piece of a br body, yielding decoded pieces; raises Invalid for a corrupt stream."""
        d = self._decompressor
        try:
            out = d.process(data, output_buffer_limit=DECODED_PIECE)
            # The limit stops the output buffer growing once reached; a shorter output means the decoder
            # used up its input (or finished), a full one that more is pending (asked for with empty input).
            while True:
                if out:
                    yield out
                if len(out) < DECODED_PIECE or d.is_finished():
                    return
                out = d.process(b"", output_buffer_limit=DECODED_PIECE)
        except brotli.error as exc:
            raise Invalid(f"The br-encoded request body cannot be decoded: {exc}") from None

    def finish(self) -> None:
        """Raises Invalid unless the brotli stream ended properly."""
        if not self._decompressor.is_finished():
            raise Invalid("The br-encoded request body is truncated")


def decoder_for(coding: str) -> Decoder:
    """A fresh decoder for one content coding (gzip, x-gzip, deflate or br; the caller has already refused
    others with 415)."""
    return BrotliDecoder() if coding == "br" else ZlibDecoder("gzip" if coding == "x-gzip" else coding)


def codings_of(header: str | None) -> list[str]:
    """The content codings applied, in the order they were applied; `identity` dropped."""
    return [c for c in (part.strip().lower() for part in (header or "").split(",")) if c and c != "identity"]


def _decode(pieces: Iterator[bytes], decoders: list[Decoder]) -> Iterator[bytes]:
    """`pieces` through the decoders, the last applied coding first, lazily."""
    for decoder in decoders:
        pieces = _through(pieces, decoder)
    return pieces


def _through(pieces: Iterator[bytes], decoder: Decoder) -> Iterator[bytes]:
    for piece in pieces:
        yield from decoder.feed(piece)


class DecodedBody:
    """The ASGI `receive` of a request whose body is decoded on the way: each message carries at most
    DECODED_PIECE decoded bytes; more than `limit` decoded bytes raise TooLarge (413)."""

    def __init__(self, receive: Receive, codings: list[str], limit: int) -> None:
        self.receive = receive
        self.decoders = [decoder_for(c) for c in reversed(codings)]
        self.limit = limit
        self.size = 0
        self.pending: Iterator[bytes] = iter(())
        self.ended = False

    async def __call__(self) -> Message:
        while True:
            piece = next(self.pending, None)
            if piece is not None:
                self.size += len(piece)
                if self.size > self.limit:
                    raise TooLarge(f"The decoded request body is over the limit of {self.limit} bytes")
                return {"type": "http.request", "body": piece, "more_body": True}
            if self.ended:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await self.receive()
            if message["type"] != "http.request":
                return message  # http.disconnect
            self.pending = _decode(iter((message.get("body", b""),)), self.decoders)
            if not message.get("more_body", False):
                self.pending = self._then_finish(self.pending)

    def _then_finish(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        yield from pieces
        for decoder in self.decoders:
            decoder.finish()
        self.ended = True


class ContentDecodingMiddleware:
    """Pure ASGI. A request body with `Content-Encoding` gzip, x-gzip, deflate or br (several, in the order
    applied) reaches every endpoint decoded, without `Content-Encoding` and `Content-Length` (the decoded
    length is not known up front); endpoints keep their own limits on the decoded bytes, and no body gets
    past `limit`. Any other coding is 415 before the endpoint runs (RFC 9110 15.5.16)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-encoding"), None)
        codings = codings_of(header)
        if not codings:
            await self.app(scope, receive, send)
            return
        unknown = [c for c in codings if c not in SUPPORTED]
        if unknown:
            response = error_response(Unsupported(
                f"Content-Encoding '{', '.join(unknown)}' is not supported; send the body plain or encoded "
                "with gzip, deflate or br"))
            response.headers["Accept-Encoding"] = "gzip, deflate, br"
            await response(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
        await self.app({**scope, "headers": headers}, DecodedBody(receive, codings, self.limit), send)
