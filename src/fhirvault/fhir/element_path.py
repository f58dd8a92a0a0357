"""The FHIRPath subset of `$binary-access-*` `path`: member access and indexes from the resource type."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_STEP = re.compile(r"([A-Za-z][A-Za-z0-9_]*)(?:\[(\d+)\])?")


class PathError(ValueError):
    """The path does not parse, or names another resource type."""


@dataclass(frozen=True)
class Step:
    """One step of an element path: an element name and, for a repeating element, the index (0-based) or None."""

    name: str
    index: int | None = None


@dataclass(frozen=True)
class ElementPath:
    """A path to one element of a resource, as FHIRPath writes it (`DocumentReference.content[0].attachment`):
    the resource type and the steps below it."""

    resource_type: str
    steps: tuple[Step, ...]

    @property
    def element_path(self) -> str:
        """The path without indexes, as the R4 model tables name elements (`DocumentReference.content.attachment`)."""
        return ".".join([self.resource_type, *(s.name for s in self.steps)])

    def __str__(self) -> str:
        parts = [self.resource_type] + [f"{s.name}[{s.index}]" if s.index is not None else s.name for s in self.steps]
        return ".".join(parts)


def parse_element_path(text: str) -> ElementPath:
    """`DocumentReference.content[1].attachment` -> ElementPath; raises PathError naming the fault."""
    text = text.strip()
    if not text:
        raise PathError("the path is empty")
    parts = text.split(".")
    steps: list[Step] = []
    for i, part in enumerate(parts):
        m = _STEP.fullmatch(part)
        if not m:
            raise PathError(f"'{part}' in '{text}' is not an element name with an optional [index]")
        if i == 0:
            if m.group(2) is not None:
                raise PathError(f"the path must start with a resource type, not '{part}'")
            continue
        steps.append(Step(m.group(1), int(m.group(2)) if m.group(2) is not None else None))
    return ElementPath(parts[0], tuple(steps))


def resolve_first(resource: dict[str, Any], path: ElementPath) -> Any:
    """The first value the path selects (FHIRPath collection semantics: lists flatten unless indexed),
    or None when it selects nothing. The value is the stored object itself, so callers may edit it."""
    nodes: list[Any] = [resource]
    for step in path.steps:
        nxt: list[Any] = []
        for node in nodes:
            if not isinstance(node, dict) or step.name not in node:
                continue
            value = node[step.name]
            items = value if isinstance(value, list) else [value]
            if step.index is not None:
                items = items[step.index:step.index + 1]
            nxt.extend(items)
        nodes = nxt
        if not nodes:
            return None
    return nodes[0]
