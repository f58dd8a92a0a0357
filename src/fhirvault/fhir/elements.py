"""Reading values at simple dotted element paths (`Media.subject`, `Patient.link.other`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def values_at(resource: dict[str, Any], path: str) -> Iterator[Any]:
    """Every value at `path` (the first part is the resource type), flattening lists on the way."""
    parts = path.split(".")[1:]
    yield from _walk(resource, parts)


def _walk(node: Any, parts: list[str]) -> Iterator[Any]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, parts)
        return
    if not parts:
        yield node
        return
    if isinstance(node, dict) and parts[0] in node:
        yield from _walk(node[parts[0]], parts[1:])
