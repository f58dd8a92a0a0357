"""FHIR REST endpoints under /fhir/R4: CRUD, vread, history, search, batch/transaction, metadata."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from fhirvault.errors import Invalid, NotFound, Unauthorized, Unsupported
from fhirvault.fhir.outcome import informational
from fhirvault.fhir.r4 import is_resource_type, whole_number
from fhirvault.http.negotiation import media_type, parse_prefer
from fhirvault.http.requests import read_fhir_json
from fhirvault.http.responses import FhirJsonResponse
from fhirvault.http.state import vault
from fhirvault.security.principal import Principal
from fhirvault.service.bundles import parse_etag
from fhirvault.service.context import RequestContext
from fhirvault.service.history import history_bundle
from fhirvault.service.resources import WriteResult
from fhirvault.service.search import DEFAULT_COUNT, MAX_COUNT
from fhirvault.service.searchset import searchset_bundle
from fhirvault.service.services import StoredResource
from fhirvault.service.timeutil import to_http_date


def context(request: Request) -> RequestContext:
    ctx: RequestContext | None = getattr(request.state, "ctx", None)
    if ctx is None or not isinstance(ctx.principal, Principal):
        # The auth middleware sets the caller on every non-public path; never run as "trusted" here.
        raise Unauthorized("This request needs an access token", code="login")
    prefer = parse_prefer(request.headers.get("prefer"))
    ctx.handling_strict = prefer.get("handling") == "strict"
    return ctx


def resource_type_of(request: Request) -> str:
    rtype: str = request.path_params["rtype"]
    if not is_resource_type(rtype):
        raise NotFound(f"'{rtype}' is not a resource type this server knows (R4)")
    return rtype


def version_headers(stored: StoredResource, base_url: str, with_location: bool) -> dict[str, str]:
    headers = {"ETag": f'W/"{stored.version_id}"', "Last-Modified": to_http_date(stored.last_updated)}
    if with_location:
        headers["Location"] = f"{base_url}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
    return headers


async def resource_response(request: Request, stored: StoredResource, status: int = 200,
                            with_location: bool = False) -> Response:
    v = vault(request)
    ctx = context(request)
    headers = version_headers(stored, ctx.base_url, with_location)
    assert stored.content is not None
    rendered = (await v.resources.render(ctx, [stored.content]))[0]
    return FhirJsonResponse(rendered, status, headers)


async def write_response(request: Request, result: WriteResult) -> Response:
    ctx = context(request)
    status = 200 if result.existing else (201 if result.created else 200)
    headers = version_headers(result.stored, ctx.base_url, with_location=True)
    prefer = parse_prefer(request.headers.get("prefer")).get("return", "representation")
    if prefer == "minimal":
        return Response(status_code=status, headers=headers)
    if prefer == "operationoutcome":
        verb = "found" if result.existing else "created" if result.created else "updated"
        return FhirJsonResponse(informational([f"{result.stored.resource_type}/{result.stored.id} {verb}"]),
                                status, headers)
    return await resource_response(request, result.stored, status, with_location=True)


def if_match_version(request: Request) -> int | None:
    value = request.headers.get("if-match")
    return parse_etag(value) if value else None


# -- instance and type level -------------------------------------------------------------------
async def create(request: Request) -> Response:
    rtype = resource_type_of(request)
    v = vault(request)
    body = await read_fhir_json(request, v.settings.max_json_bytes)
    result = await v.resources.create(context(request), rtype, body, request.headers.get("if-none-exist"))
    return await write_response(request, result)


async def read(request: Request) -> Response:
    return await read_resource(request, resource_type_of(request))


async def read_resource(request: Request, rtype: str) -> Response:
    """The read interaction for a type known from the route rather than the URL's type segment."""
    stored = await vault(request).resources.read(context(request), rtype, request.path_params["rid"])
    return await resource_response(request, stored)


async def vread(request: Request) -> Response:
    rtype = resource_type_of(request)
    p = request.path_params
    stored = await vault(request).resources.vread(context(request), rtype, p["rid"], p["vid"])
    return await resource_response(request, stored)


async def update(request: Request) -> Response:
    rtype = resource_type_of(request)
    v = vault(request)
    body = await read_fhir_json(request, v.settings.max_json_bytes)
    result = await v.resources.update(context(request), rtype, request.path_params["rid"], body,
                                      if_match_version(request))
    return await write_response(request, result)


async def delete(request: Request) -> Response:
    rtype = resource_type_of(request)
    stored = await vault(request).resources.delete(context(request), rtype, request.path_params["rid"])
    headers = {"ETag": f'W/"{stored.version_id}"'} if stored else {}
    return Response(status_code=204, headers=headers)


# -- search -------------------------------------------------------------------------------------
async def search(request: Request) -> Response:
    rtype = resource_type_of(request)
    params = list(request.query_params.multi_items())
    if request.method == "POST":
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/x-www-form-urlencoded"):
            form = await request.form()
            params += [(k, str(val)) for k, val in form.multi_items()]
        elif ctype:
            raise Unsupported(f"POST {rtype}/_search takes its parameters as application/x-www-form-urlencoded, "
                              f"not '{media_type(ctype)}'")
    return FhirJsonResponse(await searchset_bundle(vault(request).resources, context(request), rtype, params))


# -- history ------------------------------------------------------------------------------------
async def history(request: Request) -> Response:
    rtype = request.path_params.get("rtype")
    if rtype is not None:
        rtype = resource_type_of(request)
    rid = request.path_params.get("rid")
    q = request.query_params
    count = _bounded_int(q.get("_count"), "_count", DEFAULT_COUNT)
    offset = _bounded_int(q.get("_offset"), "_offset", 0)
    return FhirJsonResponse(await history_bundle(vault(request).resources, context(request), rtype, rid,
                                                 q.get("_since"), count, offset))


def _bounded_int(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    number = whole_number(value)
    if number is None:
        raise Invalid(f"{name}={value!r} must be a whole number (at most 18 digits)")
    return min(number, MAX_COUNT) if name == "_count" else number


# -- system level -------------------------------------------------------------------------------
async def batch(request: Request) -> Response:
    v = vault(request)
    body = await read_fhir_json(request, v.settings.max_json_bytes)
    return FhirJsonResponse(await v.bundles.process(context(request), body))


async def metadata(request: Request) -> Response:
    return FhirJsonResponse(vault(request).capability_statement_json())
