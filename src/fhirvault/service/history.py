"""The history interaction's Bundle (FHIR R4 http.html#history), built from the versions a caller may see."""

from __future__ import annotations

from typing import Any

from fhirvault.fhir.bundle import bundle, page_links
from fhirvault.service.context import RequestContext
from fhirvault.service.resources import ResourceService
from fhirvault.service.timeutil import parse_fhir_datetime_range, to_instant


async def history_bundle(resources: ResourceService, ctx: RequestContext, rtype: str | None, rid: str | None,
                         since: str | None, count: int, offset: int, at: str | None = None) -> dict[str, Any]:
    """One page of the history of the server (`rtype` None), of a type, or of one resource: `count`
    versions from the `offset`th (newest first), those written at or after `since` (a FHIR instant) when
    given, and those current at some moment of `at` (a FHIR date at any precision; history `_at`) when
    given. Each entry carries `request`/`response` as R4 requires; a deletion has no `resource`.
    Invalid for a bad `since`, NotFound/Forbidden as `ResourceService.history`."""
    since_us = parse_fhir_datetime_range(since)[0] if since else None
    at_range = parse_fhir_datetime_range(at) if at else None
    rows, total = await resources.history(ctx, rtype, rid, since_us, count, offset, at_range)
    rendered = iter(await resources.render(ctx, [r.content for r in rows if r.content is not None]))
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
    params = [(k, v) for k, v in (("_since", since), ("_at", at)) if v]
    links = page_links(f"{ctx.base_url}/{path}", params, count, offset, offset + count < total)
    return bundle("history", entries, total=total, links=links)
