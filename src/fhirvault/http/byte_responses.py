"""Serving one Binary version's bytes over HTTP: validators, ranges, HEAD and 304, streamed in chunks."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from fhirvault.fhir.binary import DEFAULT_CONTENT_TYPE, is_media_type, is_reference_text
from fhirvault.http import ranges
from fhirvault.http.disposition import content_disposition
from fhirvault.service.binaries import BinaryContent
from fhirvault.service.context import RequestContext
from fhirvault.service.preconditions import unmodified_since
from fhirvault.service.scans import OVERRIDE_HEADER, parse_override
from fhirvault.service.timeutil import to_http_date

ByteStream = Callable[[int, int | None], AsyncIterator[bytes]]


def strong_etag(content: BinaryContent) -> str:
    """The strong ETag of stored bytes: their SHA-256 in hex, quoted (RFC 9110 8.8.3), the same for every
    version holding these bytes."""
    return f'"{content.sha256_hex}"'


# Stored bytes are whatever a client uploaded. Served from our origin they must never run: no sniffing
# a type more active than the declared one, and a sandbox without scripts, forms or plugins for any
# document a browser might make of them. <img>, <video> and <audio> on other pages load as before.
STORED_BYTES_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
}


def is_inline_safe(content_type: str, inline_types: frozenset[str]) -> bool:
    """Whether bytes of `content_type` may be shown inline: its media type (parameters aside) is in
    `inline_types`, directly or through a `type/*` entry (INLINE_CONTENT_TYPES)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media in inline_types or f"{media.split('/', 1)[0]}/*" in inline_types


def download_disposition(content_type: str, filename: str | None, inline_types: frozenset[str]) -> str | None:
    """The Content-Disposition of stored bytes: `attachment` for every type not known to be inert (so
    HTML, SVG, XML or scripts are saved, never rendered); an inert type (an image, a video) with a kept file
    name `inline` with that name, so that a browser shows it and saves it under its name (as `attachment` it
    was downloaded, not shown); else none."""
    if not is_inline_safe(content_type, inline_types):
        return content_disposition(filename)
    return content_disposition(filename, "inline") if filename else None


def servable_type(content_type: str) -> str:
    """The type to send for stored bytes: their own when it is a valid media type, else octet-stream (an
    Attachment.contentType, or a type stored before types were checked, may be anything)."""
    return content_type if is_media_type(content_type) else DEFAULT_CONTENT_TYPE


def content_headers(content: BinaryContent, extra_headers: dict[str, str] | None,
                    inline_types: frozenset[str]) -> dict[str, str]:
    """The headers every answer of stored bytes carries: Accept-Ranges, ETag, Last-Modified, the safe Content-
    Type, nosniff and a sandboxing CSP, and a Content-Disposition (inline only for `inline_types`),
    plus `extra_headers`."""
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": strong_etag(content),
        "Last-Modified": to_http_date(content.last_updated_us),
        "Cache-Control": "private",
        **STORED_BYTES_HEADERS,
    }
    disposition = download_disposition(content.content_type, content.filename, inline_types)
    if disposition:
        headers["Content-Disposition"] = disposition
    if content.security_context and is_reference_text(content.security_context):
        headers["X-Security-Context"] = content.security_context
    headers.update(extra_headers or {})
    return headers


async def check_scan_policy(request: Request, content: BinaryContent) -> None:
    """The malware scan policy (SCAN_MODE=block) for serving these bytes to this request: Locked (423) or
    Forbidden (403) when they are held back; Invalid (400) for an X-Scan-Override other than true or false.
    Signed storage URLs carry no caller, so no override."""
    ctx = getattr(request.state, "ctx", None)
    principal = ctx.principal if isinstance(ctx, RequestContext) else None
    override = parse_override(request.headers.get(OVERRIDE_HEADER))  # 400 for a value other than true/false
    # A Binary's content is described by its id; an Attachment's inline data by "Type/id" of its resource.
    rtype, _, rid = content.binary_id.rpartition("/")
    holder = (rtype or "Binary", rid, content.version_id)
    await request.app.state.vault.scans.check_servable(content.sha256_hex, content.size, holder, principal, override)


async def serve_bytes(request: Request, content: BinaryContent, stream: ByteStream,
                      extra_headers: dict[str, str] | None = None) -> Response:
    """The answer to GET or HEAD for these bytes: 200, 206 (one range or multipart/byteranges), 304 or 416.
    Every answer carries STORED_BYTES_HEADERS; active types come as attachments (download_disposition).
    Bytes the malware scan policy holds back are never served (check_scan_policy), whoever asks."""
    await check_scan_policy(request, content)
    content = dataclasses.replace(content, content_type=servable_type(content.content_type))
    headers = content_headers(content, extra_headers, request.app.state.vault.settings.inline_types)
    is_head = request.method == "HEAD"
    if_none_match = request.headers.get("if-none-match")
    # If-Modified-Since counts only without If-None-Match (RFC 9110 13.2.2)
    since = request.headers.get("if-modified-since")
    if ranges.none_match(if_none_match, headers["ETag"]) or (
            if_none_match is None and unmodified_since(content.last_updated_us, since)):
        keep = ("ETag", "Last-Modified", "Cache-Control", "Content-Disposition", "X-Security-Context",
                *STORED_BYTES_HEADERS)
        # CORS headers too: a browser drops a cross-origin 304 without them (signed storage URLs)
        return Response(status_code=304, headers={k: v for k, v in headers.items()
                                                  if k in keep or k.startswith("Access-Control-") or k == "Vary"})
    decision = ranges.plan(content.size, request.headers.get("range"), request.headers.get("if-range"),
                           headers["ETag"], headers["Last-Modified"])
    if decision.status == 416:
        headers["Content-Range"] = ranges.unsatisfied_range(content.size)
        return Response(status_code=416, headers=headers)
    # Bytes already in memory (an inline Binary) go out as one body: a stream costs a task, a generator
    # chain and a send per chunk, more than a small answer itself.
    whole = content.inline
    if decision.status == 206 and len(decision.ranges) == 1:
        r = decision.ranges[0]
        headers["Content-Range"] = r.content_range(content.size)
        body: AsyncIterator[bytes] | bytes | None = None
        if not is_head:
            body = whole[r.start:r.end] if whole is not None else await primed(stream(r.start, r.end))
        return _body(206, content.content_type, r.length, headers, body)
    if decision.status == 206:
        boundary = secrets.token_hex(16)
        length = ranges.multipart_length(boundary, content.content_type, decision.ranges, content.size)
        body = None if is_head else _multipart(boundary, content, decision.ranges, stream)
        return _body(206, f"multipart/byteranges; boundary={boundary}", length, headers, body)
    if is_head:
        return _body(200, content.content_type, content.size, headers, None)
    return _body(200, content.content_type, content.size, headers,
                 whole if whole is not None else await primed(stream(0, None)))


def _body(status: int, media_type: str, length: int, headers: dict[str, str],
          body: AsyncIterator[bytes] | bytes | None) -> Response:
    headers = {**headers, "Content-Length": str(length), "Content-Type": media_type}
    if body is None:  # HEAD: the same headers, no body
        return Response(status_code=status, headers=headers)
    if isinstance(body, bytes):
        return Response(body, status_code=status, headers=headers)
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
