"""Search: turning query parameters into a SearchQuery, running it, and paging the result."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.errors import Invalid
from fhirvault.fhir.bundle import page_links as bundle_page_links
from fhirvault.fhir.indexing import COMPARTMENT
from fhirvault.fhir.r4 import has_param, is_valid_id, whole_number
from fhirvault.fhir.references import parse_reference
from fhirvault.service.access import AccessPolicy
from fhirvault.service.context import RequestContext
from fhirvault.service.timeutil import parse_fhir_datetime_range
from fhirvault.store.database import Database
from fhirvault.store.resources import RefFilter, ResourceStore, SearchQuery, StoredResource, TokenFilter

DEFAULT_COUNT = 20
MAX_COUNT = 1000
MAX_OR_VALUES = 100
MAX_PARAMS = 100  # each becomes SQL conditions; a query holds only so many
COUNT_SCAN = 500  # matches read at a time when a total is counted row by row
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
# Parameters that shape the result rather than filter it.
RESULT_PARAMS = {"_count", "_offset", "_sort", "_summary", "_total", "_format", "_pretty", "_include"}


@dataclass
class ParsedSearch:
    query: SearchQuery
    summary_count: bool = False
    total_accurate: bool = False
    ignored: list[str] = field(default_factory=list)
    includes: list[str] = field(default_factory=list)
    echo: list[tuple[str, str]] = field(default_factory=list)  # the parameters we honoured, for links


@dataclass
class SearchResult:
    matches: list[StoredResource]
    total: int | None
    parsed: ParsedSearch


def _int_param(name: str, value: str, lo: int, hi: int | None = None) -> int:
    n = whole_number(value)
    if n is None:
        raise Invalid(f"Search parameter {name}={value!r} must be a whole number (at most 18 digits)")
    if n < lo:
        raise Invalid(f"Search parameter {name}={value} must be at least {lo}")
    return min(n, hi) if hi is not None else n


def parse_search(rtype: str, params: list[tuple[str, str]], base_url: str, strict: bool) -> ParsedSearch:
    q = SearchQuery(resource_type=rtype, count=DEFAULT_COUNT)
    parsed = ParsedSearch(query=q)
    if len(params) > MAX_PARAMS:
        raise Invalid(f"A search takes at most {MAX_PARAMS} parameters, not {len(params)}")
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name == "_count":
            q.count = _int_param("_count", value, 0, MAX_COUNT)
        elif name == "_offset":
            q.offset = _int_param("_offset", value, 0)
            continue  # links add their own
        elif name == "_sort":
            if value not in ("_lastUpdated", "-_lastUpdated"):
                raise Invalid(f"_sort={value} is not supported; use _lastUpdated or -_lastUpdated")
            q.sort_desc = value.startswith("-")
        elif name == "_summary":
            if value == "count":
                parsed.summary_count = True
            elif value != "false":
                _unsupported(parsed, strict, f"_summary={value}")
                continue
        elif name == "_total":
            if value == "accurate":
                parsed.total_accurate = True
            elif value not in ("none", "estimate"):
                raise Invalid(f"_total={value} is not one of none, estimate, accurate")
        elif name in ("_format", "_pretty"):
            continue
        elif name == "_include":
            parsed.includes.append(value)
        elif name == "_id":
            ids = [v for v in value.split(",") if v]
            _check_or_count(ids)
            for i in ids:
                if not is_valid_id(i):
                    raise Invalid(f"_id value '{i}' is not a valid resource id")
            q.ids = ids if q.ids is None else [i for i in q.ids if i in ids]
        elif name == "_lastUpdated":
            prefix, rest = (value[:2], value[2:]) if value[:2] in PREFIXES else ("eq", value)
            start, end = parse_fhir_datetime_range(rest)
            q.updated.append((prefix, start, end))
        elif name == "identifier" and has_param(rtype, "identifier"):
            q.tokens.append(TokenFilter("identifier", [_token(v) for v in _split_or(value)]))
        elif name in ("patient", "subject") and has_param(rtype, name):
            q.refs.append(RefFilter(name, [_ref_target(name, modifier, v, base_url) for v in _split_or(value)]))
        else:
            _unsupported(parsed, strict, raw_name)
            continue
        parsed.echo.append((raw_name, value))
    return parsed


def _unsupported(parsed: ParsedSearch, strict: bool, name: str) -> None:
    if strict:
        raise Invalid(f"Search parameter '{name}' is not supported for {parsed.query.resource_type}")
    parsed.ignored.append(name)


def _split_or(value: str) -> list[str]:
    parts = [p.replace("\\,", ",") for p in value.replace("\\,", "\x00").split(",")]
    values = [p.replace("\x00", ",") for p in parts if p]
    _check_or_count(values)
    return values


def _check_or_count(values: list[str]) -> None:
    # Each value becomes one SQL condition; thousands of them exceed what a query may hold.
    if len(values) > MAX_OR_VALUES:
        raise Invalid(f"A search parameter takes at most {MAX_OR_VALUES} comma-separated values, not {len(values)}")


def _token(value: str) -> tuple[str | None, str | None]:
    if "|" not in value:
        return None, value
    system, _, code = value.partition("|")
    return system, code or None  # "|code": no system (""), "sys|": any code


def _ref_target(param: str, modifier: str, value: str, base_url: str) -> str:
    ref = parse_reference(value, base_url)
    if ref is not None:
        return ref.relative
    if is_valid_id(value):
        if param == "patient" or modifier:
            return f"{modifier or 'Patient'}/{value}"
        raise Invalid(f"{param}={value}: give the type as well "
                      f"(e.g. {param}=Patient/{value} or {param}:Patient={value})")
    raise Invalid(f"{param}={value!r} is not a reference like Patient/123")


def restrict_to_compartment(q: SearchQuery, targets: list[str]) -> None:
    q.refs.append(RefFilter(COMPARTMENT, targets))


def page_links(base_url: str, rtype: str, parsed: ParsedSearch, total: int | None, returned: int
               ) -> list[tuple[str, str]]:
    q = parsed.query
    params = [(k, v) for k, v in parsed.echo if k not in ("_count",)]
    has_next = returned == q.count and q.count > 0 and (total is None or q.offset + q.count < total)
    return bundle_page_links(f"{base_url}/{rtype}", params, q.count, q.offset, has_next)


async def conditional_matches(store: ResourceStore, conn: AsyncConnection, ctx: RequestContext, rtype: str,
                              query_string: str, restriction: list[str] | None = None) -> list[StoredResource]:
    """Resources matching an If-None-Exist / conditional query, at most 2 (enough to tell 'many')."""
    params = parse_qsl(query_string.lstrip("?"), keep_blank_values=True)
    parsed = parse_search(rtype, params, ctx.base_url, strict=True)
    parsed.query.count = 2
    if restriction is not None:
        restrict_to_compartment(parsed.query, restriction)
    return await store.search(conn, parsed.query)


async def run_search(db: Database, store: ResourceStore, access: AccessPolicy, ctx: RequestContext, rtype: str,
                     params: list[tuple[str, str]]) -> SearchResult:
    """The search interaction (FHIR R4 search.html) on `rtype` with the query's `params`: the matches the
    caller may see, the total when asked for, and the parsed query. Forbidden without search scope."""
    access.require(ctx, "search", rtype)
    parsed = parse_search(rtype, params, ctx.base_url, ctx.handling_strict)
    restriction = access.search_restriction(ctx, rtype)
    if restriction is not None:
        restrict_to_compartment(parsed.query, restriction)
    async with db.read() as conn:
        total: int | None = None
        if parsed.summary_count or parsed.total_accurate:
            if access.hides_rows(ctx, rtype):
                total = await _visible_count(store, access, ctx, conn, parsed.query)
            else:
                total = await store.count(conn, parsed.query)
        matches = [] if parsed.summary_count else await store.search(conn, parsed.query)
        matches = [m for m in matches
                   if m.content is None or await access.can_see(ctx, conn, m.content, "search")]
    return SearchResult(matches, total, parsed)


async def _visible_count(store: ResourceStore, access: AccessPolicy, ctx: RequestContext, conn: AsyncConnection,
                         query: SearchQuery) -> int:
    """The number of matches the caller may see, judged row by row (for types whose access is not
    decided by the query alone, e.g. Binary's securityContext)."""
    scan = dataclasses.replace(query, count=COUNT_SCAN, offset=0)
    total = 0
    while True:
        rows = await store.search(conn, scan)
        for row in rows:
            if row.content is None or await access.can_see(ctx, conn, row.content, "search"):
                total += 1
        if len(rows) < COUNT_SCAN:
            return total
        scan.offset += COUNT_SCAN
