"""Binary endpoints: raw or FHIR JSON uploads, and reads that negotiate between the bytes and the resource."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from fhirvault.errors import Invalid, TooLarge
from fhirvault.fhir.binary import DEFAULT_CONTENT_TYPE, base64_length, check_reference
from fhirvault.fhir.outcome import informational
from fhirvault.fhir.r4 import whole_number
from fhirvault.fhir.subsetting import subset
from fhirvault.http.byte_responses import check_scan_policy, primed, serve_bytes
from fhirvault.http.disposition import filename_from, safe_filename
from fhirvault.http.fhir_api import (
    READ_PARAMS,
    check_query,
    context,
    not_modified,
    raw_only,
    refuse_create_precondition,
    refuse_if_none_exist,
    subsetting_params,
    vault,
    version_headers,
    write_precondition,
)
from fhirvault.http.negotiation import add_vary, binary_wants_resource, is_fhir_json, parse_prefer
from fhirvault.http.requests import parse_json, require_utf8
from fhirvault.http.responses import FHIR_CONTENT_TYPE, FhirJsonResponse
from fhirvault.service.resources import WriteResult
from fhirvault.service.services import StoredResource
from fhirvault.streams import one_chunk

# Sent by MedplumClient in its extended mode (on by default); see `extended_mode`.
EXTENDED_MODE_HEADER = "X-Medplum"
# Bytes of base64 input encoded at a time on a JSON read: a multiple of 3, so the pieces join up.
BASE64_PIECE = 3 * 256 * 1024


# -- uploads ------------------------------------------------------------------------------------
async def create(request: Request) -> Response:
    """POST /Binary: raw bytes of any Content-Type (streamed), or a FHIR JSON Binary with base64 `data`; 201
    with Location."""
    return await _write(request, None)


async def update(request: Request) -> Response:
    """PUT /Binary/{id}: raw bytes or a FHIR JSON Binary as a new version (or the first, update as create);
    write preconditions honoured."""
    return await _write(request, request.path_params["rid"])


async def _write(request: Request, rid: str | None) -> Response:
    _refuse_partial_upload(request)
    v = vault(request)
    ctx = context(request)
    if rid is None:
        refuse_create_precondition(request)
        if request.headers.get("if-none-exist") is not None:
            # Refused rather than ignored: a raw upload would be stored whatever matched.
            raise Invalid("A conditional create (If-None-Exist) is not supported for Binary; search "
                          "Binary first, or PUT Binary/[id]", code="not-supported", expression="If-None-Exist")
    else:
        refuse_if_none_exist(request, "update")
    content_type = (request.headers.get("content-type") or "").strip() or DEFAULT_CONTENT_TYPE
    # Decoded already when sent with a Content-Encoding (ContentDecodingMiddleware).
    chunks: AsyncIterator[bytes] = request.stream()
    try:
        if is_fhir_json(content_type):
            raw = await _read_json_body(request, chunks, v.settings.max_json_bytes)
            body = _binary_resource_in(raw)
            if body is not None:
                require_utf8(content_type)  # the resource is FHIR JSON; other JSON is content, its type data
                if extended_mode(request) and isinstance(body.get("url"), str):
                    # the signed URL this server gave the client in its extended mode (see `written`), sent back
                    # by a read-modify-write: it is no element of R4's Binary, and no data
                    body = {k: val for k, val in body.items() if k != "url"}
                result = await v.binaries.write_json(ctx, rid, body, write_precondition(request))
                return await written(request, result)
            chunks = one_chunk(raw)  # any other JSON is content, like every other body
        else:
            declared = request.headers.get("content-length")
            if declared and (whole_number(declared) or 0) > v.settings.max_binary_bytes:
                raise TooLarge(f"The content of {declared} bytes is over the limit of "
                               f"{v.settings.max_binary_bytes} bytes (MAX_BINARY_BYTES)")
        result = await v.binaries.write_from_stream(
            ctx, rid, chunks, content_type=content_type, security_context=_security_context(request),
            filename=safe_filename(request.query_params.get("_filename")) or filename_from(
                request.headers.get("content-disposition")),
            if_match=write_precondition(request))
    except ClientDisconnect:
        # Nothing was kept; there is nobody left to answer.
        return Response(status_code=400)
    return await written(request, result)


def _refuse_partial_upload(request: Request) -> None:
    """A request of the IETF resumable upload draft that says its body is only part of the content
    (`Upload-Complete: ?0`, or `Upload-Incomplete: ?1` of its early versions) must not become a Binary of
    that part: the draft is not offered (use tus at Binary/$upload). A complete one is a plain upload."""
    if (request.headers.get("upload-complete") or "").strip() == "?0" or \
            (request.headers.get("upload-incomplete") or "").strip() == "?1":
        raise Invalid("This server does not offer the IETF resumable upload draft, and the body is marked as "
                      "incomplete: send the whole content, or upload resumably with tus at Binary/$upload")


def _security_context(request: Request) -> str | None:
    value = request.headers.get("x-security-context")
    if not value:
        return None
    try:
        return check_reference(value, "X-Security-Context")
    except ValueError as exc:
        raise Invalid(str(exc)) from None


async def _read_json_body(request: Request, chunks: AsyncIterator[bytes], limit: int) -> bytes:
    hint = ("; upload larger content raw instead: POST /Binary with the content as the body and its own "
            "Content-Type")
    declared = request.headers.get("content-length")
    if declared and (whole_number(declared) or 0) > limit:
        raise TooLarge(f"The JSON body of {declared} bytes is over the limit of {limit} bytes (MAX_JSON_BYTES)"
                       + hint)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"The JSON body is over the limit of {limit} bytes (MAX_JSON_BYTES)" + hint)
    return bytes(body)


def _binary_resource_in(raw: bytes) -> dict[str, Any] | None:
    """The body as a FHIR Binary when it is one (then it is the resource); None when it is content."""
    try:
        body = parse_json(raw)
    except Invalid:
        # Not strict JSON: content, unless it is a Binary resource after all, which must then be refused.
        try:
            loose = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        if isinstance(loose, dict) and loose.get("resourceType") == "Binary":
            raise
        return None
    if isinstance(body, dict) and body.get("resourceType") == "Binary":
        return body
    return None


async def written(request: Request, result: WriteResult) -> Response:
    """The answer to a Binary create or update: the Binary without `data`, valid R4. A signed URL of the new
    content goes in a `Link: <url>; rel="alternate"` header; as Medplum's server does, requests in
    MedplumClient's extended mode (`X-Medplum: extended`) also get it in a `url` element, which R4's Binary
    does not define and which its `createAttachment()` copies into Attachment.url (normalization turns it
    back into `Binary/{id}`)."""
    ctx = context(request)
    status = 201 if result.created else 200
    headers = version_headers(result.stored, ctx.base_url, with_location=True)
    signed = await vault(request).signed_urls.mint(result.stored.id, result.stored.version_id)
    headers["Link"] = f'<{signed}>; rel="alternate"'
    prefer = parse_prefer(request.headers.get("prefer")).get("return")
    if prefer == "minimal":
        return Response(status_code=status, headers=headers)
    if prefer == "operationoutcome":  # as for every other write (fhir_api.write_response); it was ignored
        verb = "created" if result.created else "updated"
        return FhirJsonResponse(informational([f"Binary/{result.stored.id} {verb}"]), status, headers)
    resource = {k: val for k, val in result.resource.items() if k != "data"}
    rendered = (await vault(request).resources.render(ctx, [resource]))[0]
    if extended_mode(request):
        rendered["url"] = signed
    response = FhirJsonResponse(rendered, status, headers)
    add_vary(response.headers, EXTENDED_MODE_HEADER)
    return response


def extended_mode(request: Request) -> bool:
    """Whether the request comes from a client in MedplumClient's extended mode (`X-Medplum: extended`),
    which expects Medplum's additions to R4 in answers."""
    return (request.headers.get(EXTENDED_MODE_HEADER) or "").strip().lower() == "extended"


# -- reads --------------------------------------------------------------------------------------
async def read(request: Request) -> Response:
    """GET/HEAD Binary/{id} and its vread: the resource or the bytes, by `binary_wants_resource`. Every
    answer carries `Vary: Accept`, since the same URL gives either representation."""
    v = vault(request)
    ctx = context(request)
    p = request.path_params
    check_query(request, READ_PARAMS, "vread" if "vid" in p else "read")
    if "vid" in p:
        stored = await v.resources.vread(ctx, "Binary", p["rid"], p["vid"])
    else:
        stored = await v.resources.read(ctx, "Binary", p["rid"])
    if binary_wants_resource(request.query_params.get("_format"), request.headers.get("accept")):
        if not_modified(request, stored):  # conditional read (R4 http.html#cread), as for every other type
            headers = version_headers(stored, ctx.base_url, with_location=False)
            response: Response = Response(status_code=304, headers=headers)
        else:
            response = await _resource_response(request, stored)
    else:
        raw_only(request)
        content = await v.binaries.describe(stored)
        response = await serve_bytes(request, content, lambda start, end: v.binaries.stream(content, start, end))
    add_vary(response.headers, "Accept")
    return response


async def _resource_response(request: Request, stored: StoredResource) -> Response:
    """The Binary as R4 JSON with all of its bytes as base64 `data`, streamed in constant memory; cut down
    by `_summary` / `_elements` (R4 3.1.1.5.8-9; `data` only when they keep it)."""
    v = vault(request)
    ctx = context(request)
    headers = version_headers(stored, ctx.base_url, with_location=False)
    assert stored.content is not None
    summary, elements = subsetting_params(request)
    keeps_data = "data" in subset({**stored.content, "data": ""}, summary, elements)
    if keeps_data:
        # The resource carries all the bytes as `data`: the same policy as the raw bytes. Without `data`
        # (`_elements=id,meta,contentType`, `_summary=true`) it serves none of them, so the policy does
        # not hold it back: a resumable client reads what it made while the scan is pending.
        await check_scan_policy(request, await v.binaries.describe(stored))
    if "data" in stored.content or not stored.blob_id or not keeps_data:
        rendered = subset((await v.resources.render(ctx, [stored.content]))[0], summary, elements)
        if not keeps_data:
            rendered.pop("data", None)
        response: Response = FhirJsonResponse(rendered, 200, headers)
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(response.body))
            return Response(status_code=200, headers={**headers, "Content-Type": FHIR_CONTENT_TYPE})
        return response
    content = await v.binaries.describe(stored)
    rendered = subset((await v.resources.render(ctx, [stored.content]))[0], summary, elements)
    text = json.dumps(rendered, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    prefix = text[:-1] + b',"data":"'
    suffix = b'"}'
    headers["Content-Length"] = str(len(prefix) + base64_length(content.size) + len(suffix))
    headers["Content-Type"] = FHIR_CONTENT_TYPE
    if request.method == "HEAD":
        return Response(status_code=200, headers=headers)

    # The store is asked before the status line goes out: a store that is away gives a 503, not a 200
    # whose body breaks off.
    pieces = await primed(base64_pieces(v.binaries.stream(content)))

    async def body() -> AsyncIterator[bytes]:
        yield prefix
        async for piece in pieces:
            yield piece
        yield suffix

    return StreamingResponse(body(), status_code=200, headers=headers)


async def base64_pieces(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Base64 of the concatenated chunks, encoded piece by piece (each a multiple of 3 bytes but the last)."""
    pending = b""
    async for chunk in chunks:
        data = pending + chunk if pending else chunk
        cut = len(data) - len(data) % 3
        for offset in range(0, cut, BASE64_PIECE):
            yield base64.b64encode(data[offset:min(offset + BASE64_PIECE, cut)])
        pending = data[cut:]
    if pending:
        yield base64.b64encode(pending)
