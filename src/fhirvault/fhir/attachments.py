"""Finding every Attachment in a resource by a typed walk over the R4 element model (fhirpathpy's tables)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

BACKBONE = "BackboneElement"


@cache
def _model() -> tuple[dict[str, str], dict[str, str], frozenset[str]]:
    root = resources.files("fhirpathpy").joinpath("models/r4")
    path2type: dict[str, str] = json.loads(root.joinpath("path2Type.json").read_text())
    elsewhere: dict[str, str] = json.loads(root.joinpath("pathsDefinedElsewhere.json").read_text())
    # Backbone elements have no entry of their own; they are the paths that have children.
    parents = frozenset(path.rsplit(".", 1)[0] for path in path2type if "." in path)
    return path2type, elsewhere, parents


def _type_of(type_path: str) -> tuple[str | None, str]:
    """(element type, the path its children are described under) for a model path like `Media.content`."""
    path2type, elsewhere, parents = _model()
    type_path = elsewhere.get(type_path, type_path)  # Questionnaire.item.item is Questionnaire.item
    etype = path2type.get(type_path)
    if etype is not None:
        return etype, etype
    if type_path in parents:
        return BACKBONE, type_path
    return None, ""


def iter_attachments(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(FHIRPath-like path such as `DocumentReference.content[1].attachment`, the Attachment dict), for
    every Attachment in the resource, including contained resources and `valueAttachment` in extensions."""
    rtype = resource.get("resourceType")
    if isinstance(rtype, str):
        yield from _walk(resource, rtype, rtype)


def _walk(node: dict[str, Any], type_path: str, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, value in node.items():
        if key == "resourceType" or key.startswith("_"):
            continue
        etype, child_type_path = _type_of(f"{type_path}.{key}")
        if etype is None or not etype[0].isupper():  # unknown, or a primitive (string, System.String)
            continue
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if not isinstance(item, dict):
                continue
            item_path = f"{path}.{key}" if index is None else f"{path}.{key}[{index}]"
            if etype == "Attachment":
                yield item_path, item
                yield from _walk(item, "Attachment", item_path)  # extensions on the Attachment
            elif etype == "Resource":
                inner = item.get("resourceType")
                if isinstance(inner, str):
                    yield from _walk(item, inner, item_path)
            else:
                yield from _walk(item, child_type_path, item_path)
