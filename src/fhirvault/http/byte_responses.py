"""Serving one Binary version's bytes over HTTP: validators, ranges, HEAD and 304, streamed in chunks."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from fhirvault.http import ranges
from fhirvault.http.disposition import content_disposition
from fhirvault.service.binaries import BinaryContent
from fhirvault.service.timeutil import to_http_date

ByteStream = Callable[[int, int | None], AsyncIterator[bytes]]


def strong_etag(content: BinaryContent) -> str:
    return f'"{content.sha256_hex}"'


def content_headers(content: BinaryContent, extra_headers: dict[str, str] | None) -> dict[str, str]:
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": strong_etag(content),
        "Last-Modified": to_http_date(content.last_updated_us),
        "Cache-Control": "private",
    }
    if content.filename:
        headers["Content-Disposition"] = content_disposition(content.filename)
    if content.security_context:
        headers["X-Security-Context"] = content.security_context
    headers.update(extra_headers or {})
    return headers


async def serve_bytes(request: Request, content: BinaryContent, stream: ByteStream,
                      extra_headers: dict[str, str] | None = None) -> Response:
    """The answer to GET or HEAD for these bytes: 200, 206 (one range or multipart/byteranges), 304 or 416."""
    headers = content_headers(content, extra_headers)
    is_head = request.method == "HEAD"
    if ranges.none_match(request.headers.get("if-none-match"), headers["ETag"]):
        keep = ("ETag", "Last-Modified", "Cache-Control", "Content-Disposition", "X-Security-Context")
        return Response(status_code=304, headers={k: v for k, v in headers.items() if k in keep})
    decision = ranges.plan(content.size, request.headers.get("range"), request.headers.get("if-range"),
                           headers["ETag"], headers["Last-Modified"])
    if decision.status == 416:
        headers["Content-Range"] = ranges.unsatisfied_range(content.size)
        return Response(status_code=416, headers=headers)
    if decision.status == 206 and len(decision.ranges) == 1:
        r = decision.ranges[0]
        headers["Content-Range"] = r.content_range(content.size)
        body = None if is_head else await primed(stream(r.start, r.end))
        return _body(206, content.content_type, r.length, headers, body)
    if decision.status == 206:
        boundary = secrets.token_hex(16)
        length = ranges.multipart_length(boundary, content.content_type, decision.ranges, content.size)
        body = None if is_head else _multipart(boundary, content, decision.ranges, stream)
        return _body(206, f"multipart/byteranges; boundary={boundary}", length, headers, body)
    return _body(200, content.content_type, content.size, headers,
                 None if is_head else await primed(stream(0, None)))


def _body(status: int, media_type: str, length: int, headers: dict[str, str],
          body: AsyncIterator[bytes] | None) -> Response:
    headers = {**headers, "Content-Length": str(length), "Content-Type": media_type}
    if body is None:  # HEAD: the same headers, no body
        return Response(status_code=status, headers=headers)
    return StreamingResponse(body, status_code=status, headers=headers)


async def primed(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`body` with its first chunk already read, so that a storage error before the first byte still
    becomes an error response instead of a broken stream."""
    iterator = aiter(body)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        first = None

    async def rest() -> AsyncIterator[bytes]:
        if first is not None:
            yield first
        async for chunk in iterator:
            yield chunk

    return rest()


async def _multipart(boundary: str, content: BinaryContent, parts: tuple[ranges.ByteRange, ...],
                     stream: ByteStream) -> AsyncIterator[bytes]:
    for r in parts:
        yield ranges.part_header(boundary, content.content_type, r, content.size)
        async for chunk in stream(r.start, r.end):
            yield chunk
        yield ranges.PART_END
    yield ranges.closing_delimiter(boundary)
