"""The searchset Bundle of a search (FHIR R4 http.html#search, bundle.html#searchset), for the search
interaction and for the searches inside a batch or transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.service.context import RequestContext
from fhirvault.service.resources import ResourceService


async def searchset_bundle(resources: ResourceService, ctx: RequestContext, rtype: str | None,
                           params: list[tuple[str, str]], compartment: str | None = None,
                           conn: AsyncConnection | None = None) -> dict[str, Any]:
    """One page of the search of `rtype` (None: system search) with the query `params`, within the
    compartment `compartment` when given: matches (mode `match`), `_include`/`_revinclude` results
    (mode `include`), an OperationOutcome entry (mode `outcome`) naming each ignored parameter, `total`
    when computed, paging links and a timestamp; searched on `conn` when given. Errors as
    `ResourceService.search`."""
    result = await resources.search(ctx, rtype, params, compartment, conn)
    return await resources.searchset(ctx, result)
