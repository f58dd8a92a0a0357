"""Search use cases: type, system and compartment searches, includes, paging, and the searchset Bundle.

Access rules run inside the query (store Restriction), so a page holds `_count` entries whenever more
exist and totals count only what the caller may read; included resources obey the same rules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.clock import now_us
from fhirvault.errors import Invalid
from fhirvault.fhir.bundle import bundle
from fhirvault.fhir.outcome import warnings
from fhirvault.fhir.r4 import resource_types
from fhirvault.fhir.references import parse_reference
from fhirvault.fhir.subsetting import subset
from fhirvault.service.access import AccessPolicy, permitted_types
from fhirvault.service.context import RequestContext
from fhirvault.service.search_parse import (
    DEFAULT_COUNT,
    MAX_COUNT,
    Include,
    ParsedSearch,
    encode_cursor,
    parse_search,
)
from fhirvault.service.terminology import resolve_terms
from fhirvault.service.timeutil import to_instant
from fhirvault.store.database import Database
from fhirvault.store.resources import ResourceStore, StoredResource
from fhirvault.store.search_sql import (
    COMPARTMENT,
    AllClause,
    AnyClause,
    ChainClause,
    Clause,
    HasClause,
    ListClause,
    NotClause,
    ParamClause,
    RefTest,
    Restriction,
)

Render = Callable[[RequestContext, list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]
# A Render that may use the open connection of the search (see ResourceService.render).
RenderOn = Callable[[RequestContext, list[dict[str, Any]], AsyncConnection], Awaitable[list[dict[str, Any]]]]
__all__ = ["DEFAULT_COUNT", "MAX_COUNT", "SearchResult", "run_search", "searchset", "matching_ids",
           "conditional_matches", "compartment_clause", "guard_links"]
MAX_INCLUDE_ROUNDS = 4
MAX_INCLUDED = 1000


@dataclass
class SearchResult:
    """One page of a search: the matches, what `_include`/`_revinclude` added, and how to link on."""

    matches: list[StoredResource]
    included: list[StoredResource]
    total: int | None
    parsed: ParsedSearch
    path: str  # what the search was made on, relative to the base: `Patient`, ``, `Patient/1/Observation`
    cutoff_us: int
    extra_echo: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # for the outcome entry, besides ignored parameters
    # The matches and included resources rendered (in that order) on the search's own connection, when
    # the search was given a renderer; else `searchset` renders them.
    rendered: list[dict[str, Any]] | None = None
    # `_cursor` of the next page: the sort values of this page's last match (None: no next page)
    next_cursor: str | None = None


def compartment_clause(patient: str) -> ParamClause:
    """Criteria clause: the resource lies in the compartment of `patient` (`Patient/1`)."""
    return ParamClause("reference", COMPARTMENT, [RefTest((patient,))])


async def run_search(db: Database, store: ResourceStore, access: AccessPolicy, ctx: RequestContext,
                     rtype: str | None, params: list[tuple[str, str]], compartment: str | None = None,
                     render: RenderOn | None = None) -> SearchResult:
    """Search `rtype` (None: every type, or those of `_type`), optionally within `compartment`
    (`Patient/1`, for `Patient/1/Observation`). With `render`, the page is rendered on the search's
    connection (the read pipeline's look-ups, such as the Binaries behind attachment URLs, take no
    connection of their own). Raises Forbidden for a type the caller may not search, Invalid for a
    malformed request."""
    extra_echo: list[tuple[str, str]] = []
    if rtype is None:
        access.require(ctx, "search", None)
        types = _system_types(access, ctx, params)
        extra_echo = [(k, v) for k, v in params if k == "_type"]
    else:
        access.require(ctx, "search", rtype)
        types = [rtype]
    parsed = parse_search(types, params, ctx.base_url, ctx.handling_strict, store.text_index)
    if compartment is not None:
        parsed.criteria.clauses.append(compartment_clause(compartment))
    restriction = access.query_restriction(ctx)
    guard_links(access, ctx, parsed.criteria.clauses, restriction)
    cutoff = now_us()
    async with db.read() as conn:
        await resolve_terms(conn, store, parsed.criteria, ctx.base_url)
        total: int | None = None
        matches: list[StoredResource] = []
        if parsed.summary != "count":
            # after a cursor, `_offset` only numbers the page (for the previous link and the total)
            if parsed.after is not None:
                try:
                    store.check_after(parsed.criteria.types, parsed.sort, parsed.after)
                except ValueError as e:  # a _cursor that is not one of this search's
                    raise Invalid(f"_cursor: {e}; follow the next link as given") from None
            matches = await store.search(conn, parsed.criteria, restriction, parsed.sort, parsed.count,
                                         0 if parsed.after is not None else parsed.offset, cutoff, parsed.after)
        if parsed.summary == "count" or parsed.total in ("accurate", "estimate") or \
                (parsed.count == 0 and parsed.total is None):  # _count=0 asks for nothing but the total
            total = await store.count(conn, parsed.criteria, restriction, cutoff)
        elif parsed.total is None and parsed.offset == 0 and len(matches) < parsed.count:
            total = len(matches)  # the whole result is on this page
        next_cursor = None
        if matches and len(matches) == parsed.count:
            last = matches[-1]
            next_cursor = encode_cursor(await store.sort_values(conn, parsed.criteria.types, parsed.sort,
                                                                last.resource_type, last.id))
        included, complete = await _included(store, access, ctx, conn, matches, parsed, restriction)
        rendered = None
        if render is not None:
            rendered = await render(ctx, [s.content for s in (*matches, *included) if s.content is not None], conn)
    path = rtype or ""
    if compartment is not None:
        path = f"{compartment}/{rtype}"
    notes = [] if complete else [f"_include/_revinclude found more than {MAX_INCLUDED} resources; only the "
                                 f"first {MAX_INCLUDED} are included (ask for a smaller _count)"]
    return SearchResult(matches, included, total, parsed, path, cutoff, extra_echo, warnings=notes,
                        rendered=rendered, next_cursor=next_cursor)


def guard_links(access: AccessPolicy, ctx: RequestContext, clauses: list[Clause],
                restriction: Restriction | None) -> None:
    """Hold chains, `_has` and `_list` (at any depth, inside `_filter`'s `or`/`not` too) to what the caller may
    read: a chain follows references only to types the caller may search (an explicit `:Type` it may not
    search, or no such type at all, raises Forbidden naming the scope), `_has` needs the scope of its
    source type and `_list` List's, and the resources each one tests must meet the caller's `restriction`. Otherwise a
    search on a readable type would tell what unreadable resources hold (`Patient?_has:Observation:
    subject:code=...` without any Observation scope). Changes the clauses in place."""
    for clause in clauses:
        if isinstance(clause, ChainClause):
            allowed = permitted_types(access, ctx, "search", clause.target_types)
            if not allowed:
                access.require(ctx, "search", clause.target_types[0])  # raises Forbidden, naming the scope
            clause.target_types = allowed
            clause.criteria.types = allowed
            clause.restriction = restriction
            guard_links(access, ctx, clause.criteria.clauses, restriction)
        elif isinstance(clause, HasClause):
            access.require(ctx, "search", clause.source_type)
            clause.restriction = restriction
            guard_links(access, ctx, clause.criteria.clauses, restriction)
        elif isinstance(clause, ListClause):
            access.require(ctx, "search", "List")  # `_list` tells what a List holds
            clause.restriction = restriction
        elif isinstance(clause, AnyClause | AllClause):
            guard_links(access, ctx, clause.clauses, restriction)
        elif isinstance(clause, NotClause):
            guard_links(access, ctx, [clause.clause], restriction)


def _system_types(access: AccessPolicy, ctx: RequestContext, params: list[tuple[str, str]]) -> list[str]:
    named = [t.strip() for k, v in params if k == "_type" for t in v.split(",") if t.strip()]
    for t in named:
        if t not in resource_types():
            raise Invalid(f"_type: '{t}' is not an R4 resource type")
    if named:
        for t in named:
            access.require(ctx, "search", t)
        return sorted(set(named))
    return permitted_types(access, ctx, "search", sorted(resource_types()))


async def _included(store: ResourceStore, access: AccessPolicy, ctx: RequestContext, conn: AsyncConnection,
                    matches: list[StoredResource], parsed: ParsedSearch, restriction: Restriction | None
                    ) -> tuple[list[StoredResource], bool]:
    """The resources `_include` and `_revinclude` add to `matches` (`:iterate` ones applied again to what
    was added, MAX_INCLUDE_ROUNDS times at most), and whether that is all of them (False when more than
    MAX_INCLUDED were found and the rest left out)."""
    if not parsed.includes and not parsed.revincludes:
        return [], True
    seen = {(m.resource_type, m.id) for m in matches}
    out: list[StoredResource] = []
    current = matches
    for round_no in range(MAX_INCLUDE_ROUNDS):
        includes = [i for i in parsed.includes if round_no == 0 or i.iterate]
        revincludes = [i for i in parsed.revincludes if round_no == 0 or i.iterate]
        if not current or not (includes or revincludes):
            break
        found: list[StoredResource] = []
        for inc in includes:
            found += await _include_targets(store, conn, current, inc, restriction)
        for inc in revincludes:
            targets = [f"{m.resource_type}/{m.id}" for m in current]
            source = None if inc.source_type == "*" else inc.source_type
            found += await store.referencing(conn, source, inc.param, targets, restriction, MAX_INCLUDED + 1)
        candidates = []
        for r in found:
            key = (r.resource_type, r.id)
            if key not in seen and r.content is not None:
                seen.add(key)
                candidates.append(r)
        readable = await access.can_see_each(ctx, conn, [r.content for r in candidates if r.content is not None])
        new = [r for r, ok in zip(candidates, readable, strict=True) if ok]
        out += new
        current = new
        if len(out) > MAX_INCLUDED:
            return out[:MAX_INCLUDED], False
    return out, True


async def _include_targets(store: ResourceStore, conn: AsyncConnection, current: list[StoredResource],
                           inc: Include, restriction: Restriction | None) -> list[StoredResource]:
    owners = [(m.resource_type, m.id) for m in current if inc.source_type in ("*", m.resource_type)]
    rows = await store.references_from(conn, owners, [inc.param] if inc.param else None)
    wanted: list[tuple[str, str]] = []
    for _owner_type, _param, target in rows:
        ref = parse_reference(target)
        if ref is None or (inc.target_type and ref.resource_type != inc.target_type):
            continue
        wanted.append((ref.resource_type, ref.id))
    return await store.get_many(conn, sorted(set(wanted)), restriction)


# -- the searchset Bundle ---------------------------------------------------------------------------
def _links(ctx: RequestContext, result: SearchResult, returned: int) -> list[tuple[str, str]]:
    p = result.parsed
    base = f"{ctx.base_url}/{result.path}" if result.path else ctx.base_url
    echo = [*result.extra_echo, *[(k, v) for k, v in p.echo if k != "_count"]]
    snapshot = ("_lastUpdated", f"le{to_instant(result.cutoff_us)}")

    def link(offset: int, pinned: bool, cursor: str | None = None) -> str:
        params = [*echo, ("_count", str(p.count))]
        if pinned:
            if snapshot not in echo:
                params.append(snapshot)
            params.append(("_offset", str(offset)))
        if cursor is not None:
            params.append(("_cursor", cursor))
        return f"{base}?" + urlencode(params)

    self_cursor = encode_cursor(p.after) if p.after is not None else None
    links = [("self", link(p.offset, p.offset > 0 or self_cursor is not None, self_cursor))]
    has_next = returned == p.count and p.count > 0 and (result.total is None or p.offset + p.count < result.total)
    if has_next and p.summary != "count" and result.next_cursor is not None:
        # the next page starts after this page's last match (keyset), not at an offset: resources that
        # leave the pinned set between requests (updated or deleted) shift nothing
        links.append(("next", link(p.offset + p.count, True, result.next_cursor)))
    if p.offset > 0:
        links.append(("previous", link(max(0, p.offset - p.count), True)))
    return links


async def searchset(render: Render, ctx: RequestContext, result: SearchResult) -> dict[str, Any]:
    """The searchset Bundle of `result`: matches (search.mode match), included resources (include), an
    OperationOutcome entry (outcome) naming ignored parameters, paging links, total; resources rendered
    through the read hooks and cut down by `_summary` / `_elements`."""
    p = result.parsed
    rendered = result.rendered
    if rendered is None:
        stored = [*result.matches, *result.included]
        rendered = await render(ctx, [s.content for s in stored if s.content is not None])
    entries: list[dict[str, Any]] = []
    for i, r in enumerate(rendered):
        mode = "match" if i < len(result.matches) else "include"
        entries.append({"fullUrl": f"{ctx.base_url}/{r['resourceType']}/{r['id']}",
                        "resource": subset(r, p.summary, p.elements), "search": {"mode": mode}})
    notes = [f"Search parameter '{n}' is not supported and was ignored" for n in p.ignored] + result.warnings
    if notes:
        entries.append({"resource": warnings(notes), "search": {"mode": "outcome"}})
    return bundle("searchset", entries, total=result.total, links=_links(ctx, result, len(result.matches)),
                  timestamp=to_instant(now_us()))


# -- for other use cases ----------------------------------------------------------------------------
async def matching_ids(store: ResourceStore, access: AccessPolicy, ctx: RequestContext, conn: AsyncConnection,
                       rtype: str, query: str | list[tuple[str, str]], limit: int | None = None) -> list[str]:
    """Ids of the `rtype` resources the caller may read that match a search query string (`a=1&b=2`) or
    parameter list, at most `limit`. Raises Invalid (400) for an unknown parameter and for criteria
    without any filtering parameter (conditional interactions must never ignore criteria, nor match
    every resource of the type). Runs on `conn`, so it sees the caller's own transaction."""
    params = parse_qsl(query.lstrip("?"), keep_blank_values=True) if isinstance(query, str) else query
    parsed = parse_search([rtype], params, ctx.base_url, strict=True, text_search=store.text_index)
    if not parsed.criteria.clauses:
        shown = query if isinstance(query, str) else urlencode(query)
        raise Invalid(f"The criteria '{shown}' have no search parameter that selects {rtype} resources; "
                      "give one, e.g. identifier=system|value")
    restriction = access.query_restriction(ctx)
    guard_links(access, ctx, parsed.criteria.clauses, restriction)
    await resolve_terms(conn, store, parsed.criteria, ctx.base_url)
    found = await store.matching_ids(conn, parsed.criteria, restriction, limit)
    return [rid for _t, rid in found]


async def conditional_matches(store: ResourceStore, access: AccessPolicy, conn: AsyncConnection,
                              ctx: RequestContext, rtype: str, criteria: str, limit: int = 2
                              ) -> list[StoredResource]:
    """Up to `limit` resources the caller may read that match the criteria of a conditional interaction
    (If-None-Exist, conditional update/patch/delete, conditional reference; R4 http.html), found by the
    search framework with its access rules inside the query. Raises Invalid as `matching_ids`."""
    ids = await matching_ids(store, access, ctx, conn, rtype, criteria, limit)
    return await store.get_many(conn, [(rtype, i) for i in ids])
