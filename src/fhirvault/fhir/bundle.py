"""Bundle construction for search, history and batch/transaction responses."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode


def bundle(kind: str, entries: list[dict[str, Any]], *, total: int | None = None,
           links: list[tuple[str, str]] | None = None, bundle_id: str | None = None,
           timestamp: str | None = None) -> dict[str, Any]:
    """A Bundle of type `kind` (searchset, history, batch-response, ...) holding `entries` in order,
    with `total` and `links` ((relation, url) pairs) when given (FHIR R4 bundle.html)."""
    out: dict[str, Any] = {"resourceType": "Bundle"}
    if bundle_id:
        out["id"] = bundle_id
    out["type"] = kind
    if timestamp:
        out["timestamp"] = timestamp
    if total is not None:
        out["total"] = total
    if links:
        out["link"] = [{"relation": rel, "url": url} for rel, url in links]
    if entries:
        out["entry"] = entries
    return out


def page_links(url: str, params: list[tuple[str, str]], count: int, offset: int, has_next: bool
               ) -> list[tuple[str, str]]:
    """The `self`, `next` and `previous` links of one page of a search or history Bundle (FHIR R4
    http.html#paging), as (relation, url) pairs. `url` is the interaction's URL without a query;
    `params` the query parameters to repeat (without `_count` and `_offset`); `count` entries per page,
    this page starting at entry `offset` (0-based)."""

    def link(at: int) -> str:
        return f"{url}?" + urlencode([*params, ("_count", str(count)), ("_offset", str(at))])

    links = [("self", link(offset))]
    if has_next:
        links.append(("next", link(offset + count)))
    if offset > 0:
        links.append(("previous", link(max(0, offset - count))))
    return links
