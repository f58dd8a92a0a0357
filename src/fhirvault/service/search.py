"""Search use cases: type, system and compartment searches, includes, paging, and the searchset Bundle.

Access rules run inside the query (store Restriction), so a page holds `_count` entries whenever more
exist and totals count only what the caller may read; included resources obey the same rules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

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
    query_pairs,
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
    # `next` is the first page: a page reached backwards that nothing is left before
    next_is_first: bool = False
    # the `previous` link: its `_offset` (a page number) and the cursor parameter it carries (`_before`; None:
    # none, the first page or an older `_offset` link), or None for no previous page
    previous: tuple[int, tuple[str, str] | None] | None = None
    page_offset: int = 0  # the page number `_offset` of this page (0 once a page reached backwards is the first)


def compartment_clause(patient: str) -> ParamClause:
    """Criteria clause: the resource lies in the compartment of `patient` (`Patient/1`)."""
    return ParamClause("reference", COMPARTMENT, [RefTest((patient,))])


async def run_search(db: Database, store: ResourceStore, access: AccessPolicy, ctx: RequestContext,
                     rtype: str | None, params: list[tuple[str, str]], compartment: str | None = None,
                     render: RenderOn | None = None, conn: AsyncConnection | None = None) -> SearchResult:
    """Search `rtype` (None: every type, or those of `_type`), optionally within `compartment`
    (`Patient/1`, for `Patient/1/Observation`). With `render`, the page is rendered on the search's
    connection (the read pipeline's look-ups, such as the Binaries behind attachment URLs, take no
    connection of their own). `conn`: an open connection to search on (a transaction Bundle's GET entries
    see what its writes wrote); otherwise a read connection of its own. Raises Forbidden for a type the
    caller may not search, Invalid for a malformed request."""
    extra_echo: list[tuple[str, str]] = []
    if rtype is None:
        access.require(ctx, "search", None)
        types = _system_types(access, ctx, params)
        extra_echo = [(k, v) for k, v in params if k == "_type"]
    else:
        access.require(ctx, "search", rtype)
        types = [rtype]
        named = [t.strip() for k, v in params if k == "_type" for t in v.split(",")]
        if named and set(named) != {rtype}:
            # R4 `_type` chooses the types of a system search; here the path has chosen one already
            raise Invalid(f"_type={','.join(named)} on a search of {rtype}: search [base]?_type=... for other "
                          f"types, or leave _type out")
    parsed = parse_search(types, params, ctx.base_url, ctx.handling_strict, store.text_index, store.validated)
    if compartment is not None:
        parsed.criteria.clauses.append(compartment_clause(compartment))
    restriction = access.query_restriction(ctx)
    guard_links(access, ctx, parsed.criteria.clauses, restriction)
    cutoff = now_us()
    async with (nullcontext(conn) if conn is not None else db.read(snapshot=True)) as conn:
        await resolve_terms(conn, store, parsed.criteria, ctx.base_url)
        total: int | None = None
        matches: list[StoredResource] = []
        more = False  # whether the result goes on after this page
        before_start = parsed.offset > 0  # whether it has matches before this page (see below)
        if parsed.summary != "count":
            for name, values in (("_cursor", parsed.after), ("_before", parsed.before)):
                if values is not None:
                    try:
                        store.check_after(parsed.criteria.types, parsed.sort, values)
                    except ValueError as e:  # a cursor that is not one of this search's
                        raise Invalid(f"{name}: {e}; follow the paging links as given") from None
            if parsed.count > 0:
                # one match more than the page, to know whether there is a page after it (or before it)
                if parsed.before is not None:
                    rows = await store.search(conn, parsed.criteria, restriction, parsed.sort, parsed.count + 1,
                                              0, cutoff, before=parsed.before)
                    before_start = len(rows) > parsed.count
                    matches = rows[1:] if before_start else rows
                    more = True  # the page the `previous` link was taken from
                else:
                    # after a cursor, `_offset` only numbers the page (for the previous link and the total)
                    rows = await store.search(conn, parsed.criteria, restriction, parsed.sort, parsed.count + 1,
                                              0 if parsed.after is not None else parsed.offset, cutoff, parsed.after)
                    more = len(rows) > parsed.count
                    matches = rows[:parsed.count]
        if parsed.summary == "count" or parsed.total in ("accurate", "estimate") or \
                (parsed.count == 0 and parsed.total is None):  # _count=0 asks for nothing but the total
            total = await store.count(conn, parsed.criteria, restriction, cutoff)
        elif parsed.total is None and parsed.offset == 0 and parsed.after is None and parsed.before is None \
                and len(matches) < parsed.count:
            total = len(matches)  # the whole result is on this page
        links = await _page_links(store, conn, parsed, matches, more, before_start, restriction, cutoff)
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
                        rendered=rendered, next_cursor=links.next_cursor, next_is_first=links.next_is_first,
                        previous=links.previous, page_offset=links.page_offset)


@dataclass
class _PageLinks:
    next_cursor: str | None = None
    next_is_first: bool = False
    previous: tuple[int, tuple[str, str] | None] | None = None
    page_offset: int = 0


async def _page_links(store: ResourceStore, conn: AsyncConnection, parsed: ParsedSearch,
                      matches: list[StoredResource], more: bool, before_start: bool,
                      restriction: Restriction | None, cutoff: int) -> _PageLinks:
    """Where the `next` and `previous` links of a page lead (FHIR R4 http.html#paging), both keyset: `next`
    after the page's last match (`_cursor`), `previous` to the `_count` matches just before its first one
    (`_before`), so that resources that leave the pinned result between requests shift neither. `more`:
    the result goes on after the page; `before_start`: it has matches before the page. `_offset` only
    numbers the pages (the first is 0), as the older links that carried nothing else did."""
    out = _PageLinks(page_offset=parsed.offset)
    if parsed.before is not None and not before_start:
        out.page_offset = 0  # the page reached the start of the result: it is the first page
    # the cursors of the page's first and last match, in one query
    ends = [m for m, wanted in ((matches[0], before_start), (matches[-1], more)) if wanted] if matches else []
    values = iter(await store.sort_values_of(conn, parsed.criteria.types, parsed.sort,
                                             [(m.resource_type, m.id) for m in ends]))
    first_values = next(values) if matches and before_start else None
    if matches and more:
        out.next_cursor = encode_cursor(next(values))
    elif parsed.before is not None and parsed.summary != "count" and parsed.count > 0:
        out.next_is_first = True  # nothing is left before the page it came from: that one starts the result
    back = max(0, out.page_offset - parsed.count)
    if first_values is not None:
        out.previous = (back, ("_before", encode_cursor(first_values)))
    elif not matches and parsed.after is not None and parsed.offset > 0 and parsed.summary != "count" \
            and parsed.count > 0:
        # an empty page after a cursor (what came after it has left the result): the page before it ends with
        # the cursor's resource itself, so it is the page after the `_count` + 1-th match up to that one
        rows = await store.search(conn, parsed.criteria, restriction, parsed.sort, parsed.count + 1, 0, cutoff,
                                  before=parsed.after, inclusive=True)
        if len(rows) > parsed.count:
            first = rows[0]
            [first_values] = await store.sort_values_of(conn, parsed.criteria.types, parsed.sort,
                                                        [(first.resource_type, first.id)])
            out.previous = (back, ("_cursor", encode_cursor(first_values)))
        elif rows:
            out.previous = (0, None)  # the first page
    elif not matches and parsed.offset > 0 and parsed.before is None:
        out.previous = (back, None)  # a page of the older `_offset` links, or `_summary=count`: by number
    return out


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
    given = [t.strip() for k, v in params if k == "_type" for t in v.split(",")]
    if "" in given:
        raise Invalid("_type: give resource types separated by commas (e.g. _type=Patient,Observation); "
                      "an empty one names none")
    named = given
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
            # `Type:param:Target` takes only references to resources of Target (R4 3.1.1.5.5)
            targets = [f"{m.resource_type}/{m.id}" for m in current
                       if inc.target_type is None or m.resource_type == inc.target_type]
            if not targets:
                continue
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
def _links(ctx: RequestContext, result: SearchResult) -> list[tuple[str, str]]:
    p = result.parsed
    base = f"{ctx.base_url}/{result.path}" if result.path else ctx.base_url
    echo = [*result.extra_echo, *[(k, v) for k, v in p.echo if k != "_count"]]
    snapshot = ("_lastUpdated", f"le{to_instant(result.cutoff_us)}")
    # a page reached through a link already holds the first page's moment: pinning again at this page's
    # moment would change nothing but add a parameter per page (until the link exceeds MAX_PARAMS)
    pinned_before = any(_instant_at_or_before(v[2:], result.cutoff_us)
                        for k, v in echo if k == "_lastUpdated" and v.startswith("le"))

    def link(offset: int, pinned: bool, cursor: tuple[str, str] | None = None) -> str:
        params = [*echo, ("_count", str(p.count))]
        if pinned:
            if not pinned_before:
                params.append(snapshot)
            params.append(("_offset", str(offset)))
        if cursor is not None:
            params.append(cursor)
        return f"{base}?" + urlencode(params)

    self_cursor = ("_cursor", encode_cursor(p.after)) if p.after is not None else \
        ("_before", encode_cursor(p.before)) if p.before is not None else None
    links = [("self", link(p.offset, p.offset > 0 or self_cursor is not None, self_cursor))]
    # keyset both ways (see _page_links): resources that leave the pinned set between requests (updated or
    # deleted) shift nothing
    if result.next_cursor is not None:
        links.append(("next", link(result.page_offset + p.count, True, ("_cursor", result.next_cursor))))
    elif result.next_is_first:
        links.append(("next", link(0, True)))
    if result.previous is not None:
        links.append(("previous", link(result.previous[0], True, result.previous[1])))
    return links


def _instant_at_or_before(value: str, us: int) -> bool:
    """Whether `value` is a full instant (as `to_instant` writes them, with a zone) at or before `us`
    microseconds since the epoch; False for anything else (a date, a time without a zone)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return False
    return moment.tzinfo is not None and moment <= datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


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
    notes = [f"Search parameter '{n}' is not supported and was ignored" for n in p.ignored] + p.warnings + \
        result.warnings
    if notes:
        entries.append({"resource": warnings(notes), "search": {"mode": "outcome"}})
    return bundle("searchset", entries, total=result.total, links=_links(ctx, result),
                  timestamp=to_instant(now_us()))


# -- for other use cases ----------------------------------------------------------------------------
async def matching_ids(store: ResourceStore, access: AccessPolicy, ctx: RequestContext, conn: AsyncConnection,
                       rtype: str, query: str | list[tuple[str, str]], limit: int | None = None) -> list[str]:
    """Ids of the `rtype` resources the caller may read that match a search query string (`a=1&b=2`) or
    parameter list, at most `limit`. Raises Invalid (400) for an unknown parameter and for criteria
    without any filtering parameter (conditional interactions must never ignore criteria, nor match
    every resource of the type). Runs on `conn`, so it sees the caller's own transaction.

    Matching criteria is a search of `rtype`: without the type's search scope it raises Forbidden (403,
    naming the scope) before anything is looked up. Otherwise a client allowed only to create or write could
    read whole resources back through a conditional create's match, and learn ids and the existence of
    matches from conditional updates, patches, deletes and conditional references."""
    access.require(ctx, "search", rtype)
    params = query_pairs(query) if isinstance(query, str) else query
    parsed = parse_search([rtype], params, ctx.base_url, strict=True, text_search=store.text_index,
                          codes_validated=store.validated)
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
