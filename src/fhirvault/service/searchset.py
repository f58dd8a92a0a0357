"""The searchset Bundle of a search (FHIR R4 http.html#search, bundle.html#searchset), for the search
interaction and for the searches inside a batch or transaction."""

from __future__ import annotations

from typing import Any

from fhirvault.clock import now_us
from fhirvault.fhir.bundle import bundle
from fhirvault.fhir.outcome import informational
from fhirvault.service.context import RequestContext
from fhirvault.service.resources import ResourceService
from fhirvault.service.search import page_links
from fhirvault.service.timeutil import to_instant


async def searchset_bundle(resources: ResourceService, ctx: RequestContext, rtype: str,
                           params: list[tuple[str, str]]) -> dict[str, Any]:
    """One page of the search of `rtype` with the query `params`: the matches the caller may see (mode
    `match`, rendered for reading), an OperationOutcome entry (mode `outcome`) naming each parameter
    that was ignored, `total` when computed, paging links and a timestamp. Errors as
    `ResourceService.search`."""
    result = await resources.search(ctx, rtype, params)
    rendered = await resources.render(ctx, [m.content for m in result.matches if m.content is not None])
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{ctx.base_url}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
        for r in rendered
    ]
    if result.parsed.ignored:
        entries.append({"resource": informational(
            [f"Search parameter '{n}' is not supported and was ignored" for n in result.parsed.ignored]),
            "search": {"mode": "outcome"}})
    links = page_links(ctx.base_url, rtype, result.parsed, result.total, len(result.matches))
    return bundle("searchset", entries, total=result.total, links=links, timestamp=to_instant(now_us()))
