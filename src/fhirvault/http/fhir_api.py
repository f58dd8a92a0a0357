"""FHIR REST endpoints under /fhir/R4: CRUD, vread, history, search, batch/transaction, metadata."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhirvault.errors import Invalid, NotFound, Unauthorized, Unsupported
from fhirvault.fhir.bundle import bundle
from fhirvault.fhir.outcome import informational
from fhirvault.fhir.r4 import is_resource_type, whole_number
from fhirvault.http.negotiation import media_type, parse_prefer
from fhirvault.http.requests import read_fhir_json
from fhirvault.http.responses import FhirJsonResponse
from fhirvault.service.bundles import parse_etag
from fhirvault.service.context import RequestContext
from fhirvault.service.resources import WriteResult
from fhirvault.service.search import DEFAULT_COUNT, MAX_COUNT, page_links, run_search
from fhirvault.service.timeutil import now_us, parse_fhir_datetime_range, to_http_date, to_instant
from fhirvault.store.resources import StoredResource


def vault(request: Request) -> Any:
    return request.app.state.vault


def context(request: Request) -> RequestContext:
    ctx: RequestContext | None = getattr(request.state, "ctx", None)
    if ctx is None or ctx.principal is None:
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
    return await search_response(request, resource_type_of(request))


async def search_response(request: Request, rtype: str) -> Response:
    """The searchset Bundle of a search on `rtype`, from the query and (POST) a form body."""
    params = list(request.query_params.multi_items())
    if request.method == "POST":
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/x-www-form-urlencoded"):
            form = await request.form()
            params += [(k, str(val)) for k, val in form.multi_items()]
        elif ctype:
            raise Unsupported(f"POST {rtype}/_search takes its parameters as application/x-www-form-urlencoded, "
                              f"not '{media_type(ctype)}'")
    v = vault(request)
    ctx = context(request)
    result = await run_search(v.resources, ctx, rtype, params)
    rendered = await v.resources.render(ctx, [m.content for m in result.matches if m.content is not None])
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{ctx.base_url}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
        for r in rendered
    ]
    if result.parsed.ignored:
        entries.append({"resource": informational(
            [f"Search parameter '{n}' is not supported and was ignored" for n in result.parsed.ignored]),
            "search": {"mode": "outcome"}})
    links = page_links(ctx.base_url, rtype, result.parsed, result.total, len(result.matches))
    return FhirJsonResponse(bundle("searchset", entries, total=result.total, links=links,
                                   timestamp=to_instant(now_us())))


# -- history ------------------------------------------------------------------------------------
async def history(request: Request) -> Response:
    rtype = request.path_params.get("rtype")
    if rtype is not None:
        rtype = resource_type_of(request)
    return await history_response(request, rtype, request.path_params.get("rid"))


async def history_response(request: Request, rtype: str | None, rid: str | None) -> Response:
    """The history Bundle of one instance, one type (`rid` None) or the system (both None)."""
    q = request.query_params
    count = _bounded_int(q.get("_count"), "_count", DEFAULT_COUNT)
    offset = _bounded_int(q.get("_offset"), "_offset", 0)
    since = parse_fhir_datetime_range(q["_since"])[0] if q.get("_since") else None
    v = vault(request)
    ctx = context(request)
    rows, total = await v.resources.history(ctx, rtype, rid, since, count, offset)
    live = [r.content for r in rows if r.content is not None]
    rendered = iter(await v.resources.render(ctx, live))
    entries = []
    for r in rows:
        entry: dict[str, Any] = {"fullUrl": f"{ctx.base_url}/{r.resource_type}/{r.id}"}
        if r.content is not None:
            entry["resource"] = next(rendered)
        entry["request"] = {"method": r.method,
                            "url": f"{r.resource_type}/{r.id}" if r.method != "POST" else r.resource_type}
        entry["response"] = {"status": "201" if r.method == "POST" else "204" if r.deleted else "200",
                             "etag": f'W/"{r.version_id}"', "lastModified": to_instant(r.last_updated)}
        entries.append(entry)
    path = "/".join(p for p in (rtype, rid, "_history") if p)
    extra = [("_since", q["_since"])] if q.get("_since") else []

    def link(off: int) -> str:
        return f"{ctx.base_url}/{path}?" + urlencode([*extra, ("_count", count), ("_offset", off)])

    links = [("self", link(offset))]
    if offset + count < total:
        links.append(("next", link(offset + count)))
    if offset > 0:
        links.append(("previous", link(max(0, offset - count))))
    return FhirJsonResponse(bundle("history", entries, total=total, links=links))


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
    return FhirJsonResponse(vault(request).capability_statement())


def routes(prefix: str) -> list[Route]:
    table = [
        ("/metadata", metadata, ["GET"]),
        ("", batch, ["POST"]),
        ("/", batch, ["POST"]),
        ("/_history", history, ["GET"]),
        ("/{rtype}/_search", search, ["POST"]),
        ("/{rtype}/_history", history, ["GET"]),
        ("/{rtype}", search, ["GET"]),
        ("/{rtype}", create, ["POST"]),
        ("/{rtype}/{rid}/_history/{vid}", vread, ["GET"]),
        ("/{rtype}/{rid}/_history", history, ["GET"]),
        ("/{rtype}/{rid}", read, ["GET"]),
        ("/{rtype}/{rid}", update, ["PUT"]),
        ("/{rtype}/{rid}", delete, ["DELETE"]),
    ]
    return [Route(prefix + path, endpoint, methods=methods) for path, endpoint, methods in table]
