"""Bundle construction for search, history and batch/transaction responses."""

from __future__ import annotations

from typing import Any


def bundle(kind: str, entries: list[dict[str, Any]], *, total: int | None = None,
           links: list[tuple[str, str]] | None = None, bundle_id: str | None = None,
           timestamp: str | None = None) -> dict[str, Any]:
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
