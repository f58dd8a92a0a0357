"""HTTP edge of Media reads: the resource, or its raw content (`_output=data` or a matching Accept)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from fhirvault.errors import Invalid
from fhirvault.http import fhir_api
from fhirvault.http.byte_responses import serve_bytes
from fhirvault.http.fhir_api import READ_PARAMS, check_query, context, raw_only, vault
from fhirvault.http.negotiation import add_vary


async def read(request: Request) -> Response:
    """GET /Media/{id}: the raw content when `_output=data`, or when Accept equals Media.content.contentType
    and no `_format` asks for the resource (as on Binary, `_format` overrides Accept); else the resource.
    Answers carry `Vary: Accept`."""
    v = vault(request)
    if not v.settings.media_raw_enabled:
        return await fhir_api.read_resource(request, "Media")
    check_query(request, (*READ_PARAMS, "_output"), "read")
    output = request.query_params.get("_output")
    if output not in (None, "data"):
        raise Invalid(f"_output={output!r}: the only output this server gives is 'data' (the raw content)")
    ctx = context(request)
    rid = request.path_params["rid"]
    wants_data = output == "data"
    accept = request.headers.get("accept")
    if not wants_data and accept and request.query_params.get("_format") is None:
        stored = await v.resources.read(ctx, "Media", rid)
        content = (stored.content or {}).get("content")
        declared = content.get("contentType") if isinstance(content, dict) else None
        wants_data = isinstance(declared, str) and accept.strip().lower() == declared.strip().lower()
    if wants_data:
        raw_only(request)
        readable = await v.binary_access.read(ctx, "Media", rid, None, "Media.content")
        response = await serve_bytes(request, readable.content, readable.stream)
    else:
        response = await fhir_api.read_resource(request, "Media", ("_output",))
    add_vary(response.headers, "Accept")
    return response
