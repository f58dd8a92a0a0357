"""FHIR REST endpoints under /fhir/R4: CRUD, vread, history, search, batch/transaction, metadata."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import Response

from fhirvault.errors import Invalid, NotFound, Unauthorized, Unsupported
from fhirvault.fhir.dates import date_range
from fhirvault.fhir.outcome import informational
from fhirvault.fhir.r4 import is_resource_type, whole_number
from fhirvault.fhir.subsetting import subset
from fhirvault.http.negotiation import accepts_gzip, media_type, parse_prefer
from fhirvault.http.requests import (
    header_as_utf8,
    read_body_bounded,
    read_fhir_json,
    read_patch_document,
    require_utf8,
)
from fhirvault.http.responses import FhirJsonResponse
from fhirvault.http.state import vault
from fhirvault.security.principal import Principal
from fhirvault.service.context import RequestContext
from fhirvault.service.history import history_bundle
from fhirvault.service.preconditions import Precondition
from fhirvault.service.preconditions import not_modified as current_not_modified
from fhirvault.service.resources import WriteResult
from fhirvault.service.scans import OVERRIDE_HEADER, parse_override
from fhirvault.service.search import DEFAULT_COUNT, MAX_COUNT
from fhirvault.service.search_parse import element_names, summary_mode
from fhirvault.service.services import StoredResource
from fhirvault.service.timeutil import to_http_date


def context(request: Request) -> RequestContext:
    """The request's RequestContext (the caller set by the auth middleware), with the Prefer handling and the
    scan override of this request; raises Unauthorized when no authenticated client is attached, so no
    handler ever runs as a trusted caller."""
    ctx: RequestContext | None = getattr(request.state, "ctx", None)
    if ctx is None or not isinstance(ctx.principal, Principal):
        # The auth middleware sets the caller on every non-public path; never run as "trusted" here.
        raise Unauthorized("This request needs an access token", code="login")
    prefer = parse_prefer(request.headers.get("prefer"))
    ctx.handling_strict = prefer.get("handling") == "strict"
    ctx.prefer_return = prefer.get("return")
    ctx.scan_override = scan_override_asked(request)
    return ctx


def scan_override_asked(request: Request) -> bool:
    """Whether the request asks for content the malware scan policy would hold back (`X-Scan-Override:
    true`); the policy decides whether the caller may (service/scans.py). Any value other than true or
    false is Invalid (400)."""
    return parse_override(request.headers.get(OVERRIDE_HEADER))


def resource_type_of(request: Request) -> str:
    """The route's resource type segment; raises NotFound for a name that is not an R4 resource type."""
    rtype: str = request.path_params["rtype"]
    if not is_resource_type(rtype):
        raise NotFound(f"'{rtype}' is not a resource type this server knows (R4)")
    return rtype


def version_headers(stored: StoredResource, base_url: str, with_location: bool) -> dict[str, str]:
    """ETag (weak, the version id) and Last-Modified of a stored version, and its versioned Location when
    `with_location` (R4 3.1.0.7)."""
    headers = {"ETag": f'W/"{stored.version_id}"', "Last-Modified": to_http_date(stored.last_updated)}
    if with_location:
        headers["Location"] = f"{base_url}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
    return headers


async def resource_response(request: Request, stored: StoredResource, status: int = 200,
                            with_location: bool = False) -> Response:
    """The answer for one stored resource on a read: 304 when the request's validators match, else the
    rendered resource (read pipeline, `_summary`/`_elements`) with version headers."""
    v = vault(request)
    ctx = context(request)
    headers = version_headers(stored, ctx.base_url, with_location)
    if request.method in ("GET", "HEAD") and not_modified(request, stored):
        return Response(status_code=304, headers=headers)
    assert stored.content is not None
    rendered = (await v.resources.render(ctx, [stored.content]))[0]
    summary, elements = subsetting_params(request)
    return FhirJsonResponse(subset(rendered, summary, elements), status, headers)


# Query parameters of the interactions that are no search (R4 http.html): anything else is not honoured.
READ_PARAMS = ("_format", "_pretty", "_summary", "_elements")
HISTORY_PARAMS = ("_format", "_pretty", "_count", "_offset", "_since", "_at", "_total", "_until", "_summary",
                  "_elements")


def check_query(request: Request, allowed: tuple[str, ...], interaction: str) -> None:
    """Refuses (400) a query parameter the interaction does not honour, naming it, and one given twice;
    with `Prefer: handling=lenient` unknown ones are ignored as asked. A read's answer is the resource
    itself, with no room for a warning, so the default is to refuse rather than ignore silently."""
    names = [k for k, _ in request.query_params.multi_items()]
    unknown = sorted({n for n in names if n not in allowed})
    lenient = parse_prefer(request.headers.get("prefer")).get("handling") == "lenient"
    if unknown and not lenient:
        raise Invalid(f"The {interaction} interaction has no parameter {', '.join(repr(n) for n in unknown)} "
                      f"(it takes {', '.join(allowed)}); send 'Prefer: handling=lenient' to have unknown "
                      "parameters ignored")
    repeated = sorted({n for n in names if n in allowed and names.count(n) > 1})
    if repeated:
        raise Invalid(f"The {interaction} parameter {repeated[0]!r} is given more than once")


def raw_only(request: Request) -> None:
    """400 for `_summary` / `_elements` on a read answered with raw bytes, which have no elements."""
    asked = [n for n in ("_summary", "_elements") if n in request.query_params]
    if asked:
        raise Invalid(f"{asked[0]} applies to the FHIR resource, but this read answers the raw content; ask for "
                      "the resource with Accept: application/fhir+json or _format=json")


def subsetting_params(request: Request, modes: tuple[str, ...] = ("true", "text", "data", "false")
                      ) -> tuple[str | None, list[str] | None]:
    """`_summary` and `_elements` of a read or vread (FHIR R4 3.1.1.5.8-9), or of history with `modes`
    including count; 400 for a mode not in `modes`."""
    q = request.query_params
    summary = summary_mode(q.get("_summary"), modes)
    elements = element_names(q["_elements"]) if "_elements" in q else None
    return summary, elements


async def write_response(request: Request, result: WriteResult) -> Response:
    """The answer of a create, update or patch (R4 3.1.0.7-8): 201 for a create, 200 otherwise (also for an
    If-None-Exist match), version headers with Location, and the body Prefer: return asks for
    (representation by default, minimal, or OperationOutcome)."""
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


def not_modified(request: Request, stored: StoredResource) -> bool:
    """Conditional read (R4 http.html#cread, RFC 9110 13.1): If-None-Match, else If-Modified-Since."""
    return current_not_modified(stored, request.headers.get("if-none-match"), request.headers.get("if-modified-since"))


FORMAT_PARAMS = ("_format", "_pretty")  # parameters of the HTTP exchange, not of a condition


def criteria_of(request: Request, interaction: str) -> str:
    """The search criteria of a conditional interaction: the URL's query string, which must not be empty."""
    query = request.url.query
    if not query:
        raise Invalid(f"A conditional {interaction} needs search criteria in the URL, "
                      f"e.g. {request.url.path}?identifier=system|value")
    return query


def write_precondition(request: Request) -> Precondition | None:
    """The precondition of a write (PUT, PATCH, DELETE, $binary-access-write): If-Match, If-None-Match and
    If-Unmodified-Since (RFC 9110 13.1, R4 http.html#concurrency); checked inside the write's transaction,
    412 when it fails. Invalid (400) for an ETag that is not a version like W/"3"."""
    h = request.headers
    return Precondition.parse(h.get("if-match"), h.get("if-none-match"), h.get("if-unmodified-since"))


if_match_version = write_precondition  # the older name


def if_none_exist_header(request: Request) -> str | None:
    """The If-None-Exist header's criteria as text. HTTP header values reach the application as Latin-1;
    the criteria are a query string, so raw UTF-8 in them (`family=Zoëx`) is decoded as UTF-8 (it was
    searched as `ZoÃ«x`, found nothing, and the conditional create made a duplicate); bytes that are not
    UTF-8 are a 400."""
    value = request.headers.get("if-none-exist")
    if value is None:
        return None
    text = header_as_utf8(value)
    if text is None:
        raise Invalid("The If-None-Exist header is not UTF-8", expression="If-None-Exist")
    return text


def refuse_if_none_exist(request: Request, interaction: str) -> None:
    """If-None-Exist belongs to a create (POST); on an update, patch or delete it is refused (400) rather
    than ignored, which would write whatever it was meant to prevent."""
    if request.headers.get("if-none-exist") is not None:
        raise Invalid(f"If-None-Exist is for a create (POST [type]); a {interaction} does not take it (a "
                      "conditional update is PUT [type]?criteria)", expression="If-None-Exist")


def refuse_create_precondition(request: Request) -> None:
    """A create (POST) makes a new resource, which has no version to compare with: If-Match and the like
    are refused (400) rather than ignored; `If-None-Match: *` (create only) is what a create does anyway."""
    precondition = write_precondition(request)
    if precondition is not None and precondition.asks_existing:
        raise Invalid("If-Match, If-None-Match with an ETag and If-Unmodified-Since apply to an existing "
                      "resource; a create (POST) has none. Use If-None-Exist for a conditional create, or PUT "
                      "to an id", code="not-supported")


# -- instance and type level -------------------------------------------------------------------
async def create(request: Request) -> Response:
    """POST [type]; conditional with `If-None-Exist` (R4 http.html#ccreate) or with the criteria in the
    URL's query (`POST [type]?criteria`, what fhirpy's `get_or_create` and `create(**criteria)` send)."""
    rtype = resource_type_of(request)
    v = vault(request)
    refuse_create_precondition(request)
    if_none_exist = if_none_exist_header(request)
    in_url = [(k, val) for k, val in request.query_params.multi_items() if k not in FORMAT_PARAMS]
    if in_url and if_none_exist is not None:
        raise Invalid("Give the conditions of a conditional create once: in If-None-Exist or in the URL")
    body = await read_fhir_json(request, v.settings.max_json_bytes)
    result = await v.resources.create(context(request), rtype, body, urlencode(in_url) if in_url else if_none_exist)
    return await write_response(request, result)


async def read(request: Request) -> Response:
    """GET [type]/[id] (R4 read)."""
    return await read_resource(request, resource_type_of(request))


async def read_resource(request: Request, rtype: str, extra_params: tuple[str, ...] = ()) -> Response:
    """The read interaction for a type known from the route rather than the URL's type segment;
    `extra_params`: query parameters the type's own read honours besides READ_PARAMS."""
    check_query(request, READ_PARAMS + extra_params, "read")
    subsetting_params(request)  # a malformed _summary or _elements is 400 before anything is looked up
    stored = await vault(request).resources.read(context(request), rtype, request.path_params["rid"])
    return await resource_response(request, stored)


async def vread(request: Request) -> Response:
    """GET [type]/[id]/_history/[vid] (R4 vread)."""
    rtype = resource_type_of(request)
    check_query(request, READ_PARAMS, "vread")
    subsetting_params(request)
    p = request.path_params
    stored = await vault(request).resources.vread(context(request), rtype, p["rid"], p["vid"])
    return await resource_response(request, stored)


async def update(request: Request) -> Response:
    """PUT [type]/[id], or the conditional update PUT [type]?criteria (R4 http.html#cond-update)."""
    resources = vault(request).resources
    return await _by_id_or_criteria(request, "update", read_fhir_json, resources.update,
                                    resources.conditional_update)


async def patch(request: Request) -> Response:
    """PATCH [type]/[id], or PATCH [type]?criteria, with JSON Patch, JSON Merge Patch or FHIRPath Patch
    (R4 http.html#patch)."""
    resources = vault(request).resources
    return await _by_id_or_criteria(request, "patch", read_patch_document, resources.patch,
                                    resources.conditional_patch)


async def _by_id_or_criteria(request: Request, interaction: str, read_body: Callable[[Request, int], Awaitable[Any]],
                             by_id: Callable[..., Awaitable[WriteResult]],
                             by_criteria: Callable[..., Awaitable[WriteResult]]) -> Response:
    """An interaction on [type]/[id] or, conditionally, on the one match of [type]?criteria; If-Match honoured.

    `by_id` and `by_criteria` take (ctx, type, id or criteria, body, if_match)."""
    rtype = resource_type_of(request)
    refuse_if_none_exist(request, interaction)
    rid = request.path_params.get("rid")
    target = rid if rid is not None else criteria_of(request, interaction)
    body = await read_body(request, vault(request).settings.max_json_bytes)
    write = by_id if rid is not None else by_criteria
    result = await write(context(request), rtype, target, body, write_precondition(request))
    return await write_response(request, result)


async def delete(request: Request) -> Response:
    """DELETE [type]/[id] (R4 delete), with write preconditions: 204, with the deletion's version as ETag
    (none when there was nothing to delete); 200 with an OperationOutcome for `Prefer: return=OperationOutcome`."""
    rtype = resource_type_of(request)
    refuse_if_none_exist(request, "delete")
    stored = await vault(request).resources.delete(context(request), rtype, request.path_params["rid"],
                                                   write_precondition(request))
    headers = {"ETag": f'W/"{stored.version_id}"'} if stored else {}
    if parse_prefer(request.headers.get("prefer")).get("return") == "operationoutcome":
        # as every other write answers it (R4 http.html#ops); it was ignored with a bare 204
        rid = request.path_params["rid"]
        said = f"{rtype}/{rid} deleted" if stored else f"{rtype}/{rid} was not there; nothing was deleted"
        return FhirJsonResponse(informational([said]), 200, headers)
    return Response(status_code=204, headers=headers)


async def conditional_delete(request: Request) -> Response:
    """DELETE [type]?criteria (R4 http.html#cdelete): 200 with an OperationOutcome naming what was deleted."""
    rtype = resource_type_of(request)
    refuse_if_none_exist(request, "delete")
    deleted = await vault(request).resources.conditional_delete(context(request), rtype,
                                                                criteria_of(request, "delete"),
                                                                write_precondition(request))
    if not deleted:
        return FhirJsonResponse(informational([f"No {rtype} matched; nothing was deleted"]))
    headers = {"ETag": f'W/"{deleted[0].version_id}"'} if len(deleted) == 1 else {}
    return FhirJsonResponse(informational([f"{d.resource_type}/{d.id} deleted" for d in deleted]), 200, headers)


# -- search -------------------------------------------------------------------------------------
async def search_params(request: Request) -> list[tuple[str, str]]:
    """Query parameters, plus the form body of a POST _search (FHIR R4 3.1.1.1)."""
    params = list(request.query_params.multi_items())
    if request.method == "POST":
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/x-www-form-urlencoded"):
            require_utf8(ctype)
            raw = await read_body_bounded(request, vault(request).settings.max_json_bytes, "A search form body")
            try:
                # raw UTF-8 (`name=Müller`, as curl --data sends it) and %-escaped UTF-8 alike
                params += parse_qsl(raw.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict")
            except UnicodeDecodeError:
                # as in a query (routes.py): a replacement character would be searched for instead
                raise Invalid("The form body is not UTF-8: a byte, or a %-escaped sequence, that is part of no "
                              "UTF-8 character") from None
            if any("\x00" in k or "\x00" in v for k, v in params):  # as in a query (see routes.py)
                raise Invalid("The form body holds a NUL character (%00)")
        elif ctype:
            raise Unsupported("POST _search takes its parameters as application/x-www-form-urlencoded, "
                              f"not '{media_type(ctype)}'")
    return params


async def search(request: Request) -> Response:
    """Type search, GET [type]?... and POST [type]/_search; the type comes from the route or the path."""
    in_route = "rtype" in request.path_params
    rtype = resource_type_of(request) if in_route else request.url.path.rstrip("/").split("/")[-2]
    return await _search_response(request, rtype, None)


async def system_search(request: Request) -> Response:
    """System search, GET [base]?_type=... and POST [base]/_search."""
    return await _search_response(request, None, None)


async def compartment_search(request: Request) -> Response:
    """Compartment search, GET Patient/{pid}/{rtype}?..."""
    rtype = resource_type_of(request)
    return await _search_response(request, rtype, f"Patient/{request.path_params['pid']}")


async def _search_response(request: Request, rtype: str | None, compartment: str | None) -> Response:
    v = vault(request)
    ctx = context(request)
    params = await search_params(request)
    if compartment is not None:
        await v.resources.read(ctx, "Patient", compartment.split("/", 1)[1])  # 404 for an unknown patient
    result = await v.resources.search(ctx, rtype, params, compartment)
    return FhirJsonResponse(await v.resources.searchset(ctx, result))


async def everything(request: Request) -> Response:
    """Patient/{pid}/$everything: the patient and every resource in its compartment, Binaries whose
    securityContext is in it included; `_since`, `_type`, `_count` (FHIR R4 Patient/$everything)."""
    v = vault(request)
    ctx = context(request)
    pid = request.path_params["pid"]
    await v.resources.read(ctx, "Patient", pid)
    q = request.query_params
    params: list[tuple[str, str]] = []
    for name, value in q.multi_items():
        if name == "_since":
            try:
                date_range(value)
            except ValueError:
                raise Invalid(f"$everything parameter _since={value!r} is not a FHIR instant "
                              "(e.g. 2025-03-04T10:00:00Z)") from None
            params.append(("_lastUpdated", f"ge{value}"))
        elif name in ("_type", "_count", "_offset", "_format", "_pretty"):
            params.append((name, value))
        elif name in ("_sort", "_lastUpdated", "_cursor", "_before"):
            # what the operation's own paging links carry (its order, the first page's moment, the cursor)
            params.append((name, value))
        elif name in ("start", "end"):
            raise Invalid(f"$everything parameter '{name}' is not supported; use _since")
        else:
            raise Invalid(f"$everything has no parameter '{name}'")
    if not any(n == "_sort" for n, _ in params):
        params.append(("_sort", "_lastUpdated"))
    result = await v.resources.search(ctx, None, params, f"Patient/{pid}")
    result.path = f"Patient/{pid}/$everything"
    return FhirJsonResponse(await v.resources.searchset(ctx, result))


# -- history ------------------------------------------------------------------------------------
async def history(request: Request) -> Response:
    """GET [base]/_history, [type]/_history or [type]/[id]/_history (R4 history): a history Bundle, newest
    first, access rules inside the query."""
    rtype = request.path_params.get("rtype")
    if rtype is not None:
        rtype = resource_type_of(request)
    rid = request.path_params.get("rid")
    check_query(request, HISTORY_PARAMS, "history")
    q = request.query_params
    count = _bounded_int(q.get("_count"), "_count", DEFAULT_COUNT)
    offset = _bounded_int(q.get("_offset"), "_offset", 0)
    summary, elements = subsetting_params(request, ("true", "text", "data", "count", "false"))
    return FhirJsonResponse(await history_bundle(vault(request).resources, context(request), rtype, rid,
                                                 q.get("_since"), count, offset, q.get("_at"), q.get("_total"),
                                                 q.get("_until"), summary, elements))


def _bounded_int(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    number = whole_number(value)
    if number is None:
        raise Invalid(f"{name}={value!r} must be a whole number (at most 18 digits)")
    return min(number, MAX_COUNT) if name == "_count" else number


# -- system level -------------------------------------------------------------------------------
async def batch(request: Request) -> Response:
    """POST [base]: a batch or transaction Bundle. Conditions belong to its entries (`request.ifMatch`,
    `ifNoneExist`, ...); the same headers on the Bundle's own request are refused (400), not ignored."""
    for header in ("if-match", "if-none-match", "if-none-exist", "if-unmodified-since"):
        if request.headers.get(header) is not None:
            raise Invalid(f"{header.title()} on a batch or transaction applies to nothing; give the condition in "
                          "the entry's request (ifMatch, ifNoneMatch, ifNoneExist)", expression=header.title())
    v = vault(request)
    body = await read_fhir_json(request, v.settings.max_json_bytes)
    return FhirJsonResponse(await v.bundles.process(context(request), body))


CAPABILITIES_PARAMS = ("_format", "_pretty", "_summary", "_elements", "mode")
_CAPABILITIES_MODES = ("full", "normative")


async def metadata(request: Request) -> Response:
    """The capabilities interaction (R4 http.html#capabilities): the CapabilityStatement, encoded once;
    gzip-compressed (once) for clients that accept it, which nearly all do: it is about 750 KB of JSON.
    `_pretty=true` gets the plain JSON, to be indented.

    `mode=full` (the default) and `mode=normative` give the whole statement: R4's CapabilityStatement is
    normative in full. `mode=terminology` asks for a TerminologyCapabilities resource, which a server with
    no terminology service does not have: 400, as is any other mode. `_summary` and `_elements` subset the
    statement as they do a read (tagged SUBSETTED); any other parameter is a 400 (`check_query`)."""
    v = vault(request)
    if any(name != "_format" for name in request.query_params):
        check_query(request, CAPABILITIES_PARAMS, "capabilities")
        mode = request.query_params.get("mode", "full")
        if mode == "terminology":
            raise Invalid("mode=terminology asks for a TerminologyCapabilities resource; fhirvault has no "
                          "terminology service, so it has none (mode takes full or normative)")
        if mode not in _CAPABILITIES_MODES:
            raise Invalid(f"mode={mode!r} is not one of full, normative, terminology (R4 http.html#capabilities)")
        summary, elements = subsetting_params(request)
        if summary not in (None, "false") or elements:
            body, compressed = v.capability_statement_subset(summary, elements)
            return _capabilities_response(request, body, compressed)
    return _capabilities_response(request, v.capability_statement_json(), v.capability_statement_gzip())


def _capabilities_response(request: Request, body: bytes, compressed: bytes) -> Response:
    """`compressed` (gzip) to a client that accepts it, else `body` (and always to `_pretty=true`, which
    the format middleware indents)."""
    headers = {"Vary": "Accept-Encoding"}
    if request.query_params.get("_pretty") != "true" and accepts_gzip(request.headers.get("accept-encoding")):
        return FhirJsonResponse(compressed, headers={**headers, "Content-Encoding": "gzip"})
    return FhirJsonResponse(body, headers=headers)
