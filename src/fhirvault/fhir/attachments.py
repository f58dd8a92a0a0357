"""Finding every R4 Attachment in a resource by a typed walk over fhirpathpy's R4 model tables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

# Attachment-typed elements used in practice that the R4 tables lack: R5 (and Medplum's models) allow
# an Attachment in Observation.value[x] and Observation.component.value[x]; data carrying them is
# accepted by an R4 server that does not validate, so their URLs must be handled too.
BEYOND_R4 = {
    "Observation.valueAttachment": "Attachment",
    "Observation.component.valueAttachment": "Attachment",
}


Site = tuple[str | int, ...]  # keys and list indexes from a resource down to one element


@dataclass(frozen=True)
class R4Model:
    """The parts of fhirpathpy's R4 model that the walk needs."""

    types: dict[str, str]  # element path -> type name (`Patient.photo` -> `Attachment`)
    backbones: frozenset[str]  # element paths with children of their own (`DocumentReference.content`)
    elsewhere: dict[str, str]  # recursive elements -> their definition (`QuestionnaireResponse.item.item`)
    parents: dict[str, str]  # type -> base type (`Age` -> `Quantity`)
    choices: dict[str, list[str]]  # `Observation.value` -> [`Quantity`, `String`, ...]


def _load(name: str) -> Any:
    text = resources.files("fhirpathpy").joinpath(f"models/r4/{name}").read_text()
    return json.loads(text)


@cache
def r4_model() -> R4Model:
    """The R4 model tables the Attachment walk needs (element path -> type, backbone elements, repeating
    elements), loaded once."""
    types: dict[str, str] = dict(_load("path2Type.json"))
    types.update(BEYOND_R4)
    backbones = set()
    for path in types:
        parts = path.split(".")
        for i in range(2, len(parts)):
            prefix = ".".join(parts[:i])
            if prefix not in types:
                backbones.add(prefix)
    return R4Model(types, frozenset(backbones), dict(_load("pathsDefinedElsewhere.json")),
                   dict(_load("type2Parent.json")), dict(_load("choiceTypePaths.json")))


def _is_primitive(type_name: str) -> bool:
    # The tables spell primitives in lower case (`string`, `url`) or as `System.String`.
    return type_name.startswith("System.") or type_name[:1].islower()


class AttachmentWalk:
    """Walks JSON by element type; `iter_attachments` and `attachment_objects` are its public faces."""

    def __init__(self, model: R4Model) -> None:
        self.model = model
        self._resolved: dict[tuple[str, str], tuple[str, str] | None] = {}
        self._primitives = {t for t in model.types.values() if _is_primitive(t)}
        self._children: dict[str, dict[str, tuple[str, str]]] = {}

    def resolve(self, owner: str, key: str) -> tuple[str, str] | None:
        """What the child `key` of an element of model path/type `owner` is: ("type", T) for a typed
        element, ("backbone", P) for an element whose children are at model path P, or None."""
        memo_key = (owner, key)
        if memo_key in self._resolved:
            return self._resolved[memo_key]
        result = self._resolve(owner, key)
        self._resolved[memo_key] = result
        return result

    def _resolve(self, owner: str, key: str) -> tuple[str, str] | None:
        m = self.model
        current: str | None = owner
        while current is not None:
            path = f"{current}.{key}"
            if path in m.elsewhere:
                return ("backbone", m.elsewhere[path])
            if path in m.types:
                return ("type", m.types[path])
            if path in m.backbones:
                return ("backbone", path)
            choice = self._choice(current, key)
            if choice is not None:
                return ("type", choice)
            # Inherited elements (`Age.value` from Quantity, `Patient.meta` from Resource); a backbone
            # path (`Patient.contact`) has no entry and inherits from BackboneElement.
            current = m.parents.get(current) or ("BackboneElement" if current in m.backbones else None)
        return None

    def _choice(self, owner: str, key: str) -> str | None:
        for base, options in self.model.choices.items():
            owner_part, _, name = base.rpartition(".")
            if owner_part == owner and key.startswith(name):
                suffix = key[len(name):]
                for option in options:
                    if option.lower() == suffix.lower():
                        # choiceTypePaths capitalises primitives (`String`); the element tables do not.
                        lowered = option[:1].lower() + option[1:]
                        return lowered if lowered in self._primitives else option
        return None

    def collect_sites(self, node: dict[str, Any], owner: str, site: Site, out: list[tuple[Site, dict[str, Any]]]
                      ) -> None:
        """Appends to `out` (site, Attachment) for every Attachment under `node`, an element of model
        path/type `owner` found at `site`: the keys and list indexes that lead to it from the resource
        (`("content", 1, "attachment")`). Plain recursion: nested generators cost several times more, and
        every read of a resource with Binary URLs walks it once."""
        children = self._children.get(owner)
        if children is None:
            children = self._children[owner] = {}
        for key, value in node.items():
            step = children.get(key)
            if step is None:
                step = children[key] = self._step(owner, key)
            if step is _SKIP or value is None:
                continue
            what, name = step
            listed = isinstance(value, list)
            for i, item in enumerate(value if listed else (value,)):
                if not isinstance(item, dict):
                    continue
                here = (*site, key, i) if listed else (*site, key)
                if what == "backbone":
                    self.collect_sites(item, name, here, out)
                elif name == "Resource":
                    inner = item.get("resourceType")
                    if isinstance(inner, str):
                        self.collect_sites(item, inner, here, out)
                else:
                    if name == "Attachment":
                        out.append((here, item))
                    self.collect_sites(item, name, here, out)

    def _step(self, owner: str, key: str) -> tuple[str, str]:
        if key == "resourceType":
            return _SKIP
        if key.startswith("_"):
            return ("type", "Element")
        kind = self.resolve(owner, key)
        if kind is None or (kind[0] == "type" and _is_primitive(kind[1])):
            return _SKIP
        return kind


_SKIP = ("skip", "")


@cache
def element_walker() -> AttachmentWalk:
    """The one walker over the R4 model tables (its element type lookups are memoized), shared by the
    Attachment walk and fhir/bundle_links.py."""
    return AttachmentWalk(r4_model())


def iter_attachments(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Attachment in `resource` (contained resources, extensions and nested items included), as
    (FHIRPath-like path with indexes, e.g. `DocumentReference.content[1].attachment`, the Attachment
    object itself, so callers may change it in place)."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return
    for site, attachment in attachment_sites(resource):
        yield fhirpath_of(rtype, site), attachment


def fhirpath_of(resource_type: str, site: Site) -> str:
    """The FHIRPath-like path of a site: `DocumentReference.content[1].attachment`; a primitive's id and
    extensions (`_birthDate`) are named without the underscore, as FHIRPath does."""
    parts = [resource_type]
    for step in site:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            parts.append("." + (step[1:] if step.startswith("_") else step))
    return "".join(parts)


def attachment_objects(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The Attachments of `iter_attachments` without their paths."""
    return [attachment for _, attachment in attachment_sites(resource)]


def attachment_sites(resource: dict[str, Any]) -> list[tuple[Site, dict[str, Any]]]:
    """The Attachments of `attachment_objects`, each with its site (see `AttachmentWalk.collect_sites`)."""
    rtype = resource.get("resourceType")
    out: list[tuple[Site, dict[str, Any]]] = []
    if isinstance(rtype, str):
        element_walker().collect_sites(resource, rtype, (), out)
    return out


def at_site(resource: dict[str, Any], site: Site) -> Any:
    """What lies at `site` in `resource` (None when the path leads nowhere)."""
    node: Any = resource
    for step in site:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def is_attachment_element(resource_type: str, element: str) -> bool:
    """Whether `element` is an Attachment-typed element directly on `resource_type` (`photo` on Patient,
    `content` on Media, a choice such as Observation's `valueAttachment`), by the R4 model tables."""
    return element_walker().resolve(resource_type, element) == ("type", "Attachment")


def attachment_elements(resource_type: str) -> list[str]:
    """The names of the Attachment elements directly on `resource_type`, sorted (`["photo"]` for Patient)."""
    prefix = f"{resource_type}."
    names = {path[len(prefix):] for path, type_name in r4_model().types.items()
             if type_name == "Attachment" and path.startswith(prefix) and "." not in path[len(prefix):]}
    return sorted(names)
