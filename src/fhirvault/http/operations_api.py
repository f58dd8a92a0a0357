"""HTTP edge of the operations $binary-access-read and $binary-access-write."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fhirvault.errors import Invalid
from fhirvault.http import fhir_api
from fhirvault.http.byte_responses import serve_bytes
from fhirvault.http.fhir_api import context, resource_type_of, vault, write_precondition
from fhirvault.http.negotiation import is_fhir_json, media_type
from fhirvault.http.requests import parse_json, read_body_bounded, read_fhir_json, require_utf8
from fhirvault.http.responses import FhirJsonResponse
from fhirvault.service.validate_operation import validate_arguments

PARAMETERS_LIMIT = 64 * 1024


async def _path_parameter(request: Request) -> str | None:
    """`path` from the query, or from a Parameters body / form of a POSTed $binary-access-read."""
    path = request.query_params.get("path")
    if path is not None or request.method != "POST":
        return path
    ctype = media_type(request.headers.get("content-type"))
    require_utf8(request.headers.get("content-type"))
    if ctype == "application/x-www-form-urlencoded":
        form = await request.form()
        value = form.get("path")
        return str(value) if value is not None else None
    if is_fhir_json(ctype):
        body: Any = parse_json(await read_body_bounded(request, PARAMETERS_LIMIT, "The Parameters body"))
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise Invalid("The body of $binary-access-read must be a Parameters resource")
        parameters = body.get("parameter", [])
        if not isinstance(parameters, list):
            raise Invalid("Parameters.parameter must be a list", expression="Parameters.parameter")
        for p in parameters:
            if isinstance(p, dict) and p.get("name") == "path":
                value = p.get("valueString")
                if not isinstance(value, str):
                    raise Invalid("The 'path' parameter needs a valueString", expression="Parameters.parameter")
                return value
    return None


async def binary_access_read(request: Request) -> Response:
    """GET or POST [type]/[id](/_history/[vid])/$binary-access-read?path=...: the Attachment's raw bytes, with
    ranges, validators and the scan policy as on a raw Binary read."""
    rtype = resource_type_of(request)
    p = request.path_params
    readable = await vault(request).binary_access.read(
        context(request), rtype, p["rid"], p.get("vid"), await _path_parameter(request))
    return await serve_bytes(request, readable.content, readable.stream)


async def binary_access_write(request: Request) -> Response:
    """POST [type]/[id]/$binary-access-write?path=...: the request body's raw bytes (any Content-Type) become
    the Attachment's content; answers the updated resource."""
    rtype = resource_type_of(request)
    ctype = request.headers.get("content-type")
    if not ctype:
        raise Invalid("$binary-access-write needs a Content-Type: the type of the content being written")
    if is_fhir_json(ctype):
        raise Invalid("$binary-access-write takes the raw content, not FHIR JSON; send it with its own "
                      "Content-Type (e.g. image/jpeg)")
    fhir_api.refuse_if_none_exist(request, "$binary-access-write")
    v = vault(request)
    ctx = context(request)
    result = await v.binary_access.write(ctx, rtype, request.path_params["rid"],
                                         request.query_params.get("path"), request.stream(),
                                         ctype.strip(), write_precondition(request))
    return await fhir_api.resource_response(request, result.stored, 200)


async def validate(request: Request) -> Response:
    """`[type]/$validate` and `[type]/[id]/$validate` (R4 operation-resource-validate): always an
    OperationOutcome, 200 when the check could run, whether or not the resource is valid."""
    rtype = resource_type_of(request)
    v = vault(request)
    # An instance may be validated with no body (the stored resource, or mode=delete).
    length = request.headers.get("content-length")
    has_body = request.method == "POST" and (length not in (None, "0") or
                                             (length is None and "transfer-encoding" in request.headers))
    body = await read_fhir_json(request, v.settings.max_json_bytes) if has_body else None
    resource, mode, profile = validate_arguments(body, dict(request.query_params))
    outcome = await v.validate.run(context(request), rtype, request.path_params.get("rid"), resource, mode, profile)
    return FhirJsonResponse(outcome)
