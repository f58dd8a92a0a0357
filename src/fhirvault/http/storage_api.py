"""GET/HEAD/OPTIONS /storage/{binary-id}/{version-id}: bytes behind signed URLs, for browsers, with CORS."""

from __future__ import annotations

import dataclasses
import re

from starlette.requests import Request
from starlette.responses import Response

from fhirvault.errors import FhirVaultError, NotFound
from fhirvault.http.byte_responses import check_scan_policy, download_disposition, serve_bytes
from fhirvault.http.responses import error_response
from fhirvault.http.state import vault
from fhirvault.security.url_signing import parts_from

EXPOSED = "Content-Range, Accept-Ranges, Content-Length, ETag, Last-Modified, Content-Disposition"
# MedplumClient's download() sends its bearer token along; a cross-origin fetch with it needs a preflight.
ALLOWED_REQUEST_HEADERS = "Range, If-Range, If-None-Match, If-Modified-Since, Authorization"


def cors_headers(request: Request) -> dict[str, str]:
    """The CORS headers every signed storage URL answer carries (STORAGE_CORS_ORIGIN, and the headers a
    browser may read: ranges, validators, disposition). The route ignores cookies and credentials (the
    signature is the authority), so a credentialed fetch (MedplumClient's `credentials: 'include'`) is
    allowed too: with `*`, the request's own origin is named, since browsers refuse `*` with credentials."""
    allowed = vault(request).settings.storage_cors_origin
    origin = request.headers.get("origin")
    headers = {"Access-Control-Allow-Origin": allowed, "Access-Control-Expose-Headers": EXPOSED}
    if allowed == "*" and origin:
        headers.update({"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
                        "Vary": "Origin"})
    elif allowed and allowed != "*":
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


async def download(request: Request) -> Response:
    """The signed version's bytes (ranges, validators, 304) or, in s3 mode with redirects, a 307 to the
    object store. Authorization headers are ignored: the signature is the authority."""
    v = vault(request)
    cors = cors_headers(request)
    try:
        parts = parts_from(request.path_params["binary_id"], request.path_params["version_id"],
                           request.query_params)
        if parts is None:
            raise NotFound(f"No such storage URL: {request.url.path}")
        content, left = await v.storage.open(parts)
        headers = {**cors, "Cache-Control": f"private, max-age={left}"}
        if v.settings.s3_redirect_downloads:
            await check_scan_policy(request, content)  # the object store's URL would bypass serve_bytes
            disposition = download_disposition(content.content_type, content.filename, v.settings.inline_types)
            target = await v.storage.redirect_url(content, left, disposition)
            if target is not None:
                return Response(status_code=307, headers={**headers, "Location": target})
        # No X-Security-Context here: whoever holds the link gets the bytes, not which patient they belong to.
        shown = dataclasses.replace(content, security_context=None)
        return await serve_bytes(request, shown, lambda start, end: v.storage.stream(content, start, end), headers)
    except FhirVaultError as exc:
        response = error_response(exc)
        response.headers.update(cors)
        return response


async def preflight(request: Request) -> Response:
    """OPTIONS on a signed storage URL: the CORS preflight answer (GET and HEAD, the range and validator
    headers and Authorization allowed), with no token needed."""
    # Whatever request headers a client sends along (MedplumClient adds X-Medplum) change nothing here.
    asked = request.headers.get("access-control-request-headers", "")
    allowed = asked if _HEADER_NAMES.fullmatch(asked) else ALLOWED_REQUEST_HEADERS
    cors = cors_headers(request)
    cors.pop("Access-Control-Expose-Headers")
    return Response(status_code=204, headers={
        **cors,
        "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
        "Access-Control-Allow-Headers": allowed,
        "Access-Control-Max-Age": "600",
    })


# A list of header names (RFC 9110 tokens), as Access-Control-Request-Headers carries it.
_HEADER_NAMES = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
