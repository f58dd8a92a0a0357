"""The history interaction's Bundle (FHIR R4 http.html#history), built from the versions a caller may see."""

from __future__ import annotations

from typing import Any

from fhirvault.clock import now_us
from fhirvault.errors import Invalid
from fhirvault.fhir.bundle import bundle, page_links
from fhirvault.fhir.subsetting import subset
from fhirvault.service.context import RequestContext
from fhirvault.service.resources import ResourceService
from fhirvault.service.timeutil import parse_fhir_datetime_range, to_instant

TOTAL_MODES = ("none", "estimate", "accurate")


async def history_bundle(resources: ResourceService, ctx: RequestContext, rtype: str | None, rid: str | None,
                         since: str | None, count: int, offset: int, at: str | None = None,
                         total_mode: str | None = None, until: str | None = None, summary: str | None = None,
                         elements: list[str] | None = None) -> dict[str, Any]:
    """One page of the history of the server (`rtype` None), of a type, or of one resource: `count`
    versions from the `offset`th (newest first), those written at or after `since` (a FHIR instant) when
    given, and those current at some moment of `at` (a FHIR date at any precision; history `_at`) when
    given. `total_mode` (`_total`): `none` leaves the count out (one query less), else it is counted in
    SQL. `until` (an instant): versions written at or before it; the paging links of the first page pin
    the moment it was made, so that versions written meanwhile shift no later page (no duplicate, no
    gap). `summary` (true | text | data | count | false) and `elements` cut the entries' resources down as
    on a search (count: no entries, the total only). Each entry carries `request`/`response` as R4
    requires; a deletion has no `resource`.
    Invalid for a bad `since`, `at`, `until` or `_total`, NotFound/Forbidden as `ResourceService.history`."""
    if total_mode is not None and total_mode not in TOTAL_MODES:
        raise Invalid(f"_total={total_mode!r} is not one of {', '.join(TOTAL_MODES)}")
    since_us = parse_fhir_datetime_range(since)[0] if since else None
    at_range = parse_fhir_datetime_range(at) if at else None
    until_us = parse_fhir_datetime_range(until)[1] - 1 if until else now_us()
    if summary == "count" and total_mode == "none":
        raise Invalid("_summary=count asks for the total only, which _total=none leaves out")
    rows, total = await resources.history(ctx, rtype, rid, since_us, 0 if summary == "count" else count, offset,
                                          at_range, until_us, with_total=total_mode != "none")
    rendered = iter(await resources.render(ctx, [r.content for r in rows if r.content is not None]))
    entries = []
    for r in rows:
        entry: dict[str, Any] = {"fullUrl": f"{ctx.base_url}/{r.resource_type}/{r.id}"}
        if r.content is not None:
            entry["resource"] = subset(next(rendered), summary, elements)
        entry["request"] = {"method": r.method,
                            "url": f"{r.resource_type}/{r.id}" if r.method != "POST" else r.resource_type}
        # a PUT that made version 1 created the resource (update as create, R4 http.html#upsert): 201, as it
        # was answered (it was listed as 200)
        created = r.method == "POST" or r.method == "PUT" and r.version_id == 1
        entry["response"] = {"status": "201" if created else "204" if r.deleted else "200",
                             "etag": f'W/"{r.version_id}"', "lastModified": to_instant(r.last_updated)}
        entries.append(entry)
    path = "/".join(p for p in (rtype, rid, "_history") if p)
    params = [(k, v) for k, v in (("_since", since), ("_at", at), ("_total", total_mode), ("_summary", summary),
                                  ("_elements", ",".join(elements or [])),
                                  ("_until", until or to_instant(until_us))) if v]
    more = summary != "count" and (offset + count < total if total is not None else len(rows) == count > 0)
    links = page_links(f"{ctx.base_url}/{path}", params, count, offset, more)
    return bundle("history", entries, total=total, links=links)
