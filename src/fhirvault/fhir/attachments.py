"""Finding every Attachment in a resource, by the element types of fhirpathpy's R4 model tables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any


@cache
def _model(name: str) -> dict[str, str]:
    table: dict[str, str] = json.loads(
        resources.files("fhirpathpy").joinpath(f"models/r4/{name}.json").read_text())
    return table


@cache
def _backbones() -> frozenset[str]:
    """Paths of backbone elements: they have child paths of their own but no type in the table."""
    return frozenset(path.rpartition(".")[0] for path in _model("path2Type"))


def _element_type(path: str) -> str | None:
    """The type of element `path` (`Media.content` -> `Attachment`); a backbone element's own path
    stands for its type (`DocumentReference.content`); contentReference paths are followed."""
    elsewhere = _model("pathsDefinedElsewhere")
    if path in elsewhere:
        return elsewhere[path]
    if path in _model("path2Type"):
        return _model("path2Type")[path]
    return path if path in _backbones() else None


def iter_attachments(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`DocumentReference.content[0].attachment`, the Attachment object) for each Attachment, contained
    resources and extensions included; the objects are the resource's own, so changes land in it."""
    rtype = resource.get("resourceType")
    if isinstance(rtype, str):
        yield from _walk(resource, rtype, rtype)


def _walk(node: dict[str, Any], type_path: str, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, value in node.items():
        if key == "resourceType" or key.startswith("_"):
            continue
        if key in ("extension", "modifierExtension"):
            etype: str | None = "Extension"
        else:
            etype = _element_type(f"{type_path}.{key}") or _element_type(f"DomainResource.{key}")
        if etype is None or etype[:1].islower() or etype.startswith(("System.", "Element", "BackboneElement")):
            continue  # unknown or primitive
        items = value if isinstance(value, list) else [value]
        for n, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            here = f"{path}.{key}[{n}]" if isinstance(value, list) else f"{path}.{key}"
            if etype == "Attachment":
                yield here, item
            elif etype == "Resource":
                inner = item.get("resourceType")
                if isinstance(inner, str):
                    yield from _walk(item, inner, here)
            else:
                yield from _walk(item, etype, here)
