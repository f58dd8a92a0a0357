"""Where a transaction's links are rewritten inside a resource (R4 http.html#trules).

A transaction replaces a `fullUrl` (`urn:uuid:...`) or a conditional reference (`Patient?identifier=...`) by the
id the server gave: "in resource references, elements of type uri, url, oid, uuid, and <a href=""> & <img src="">
in the narrative" (an oid or uuid element keeps its value, which the id would make invalid). Only there: a
`string` that happens to hold the same text (an Identifier.value, a valueString, a note) is data, and stays as
written. The walk reads each element's type from the R4 model tables
(fhir/attachments.py's walker), through backbone elements, choice elements, extensions (on primitives too) and
contained resources. A Bundle resource is kept whole, its entries' fullUrls and references included: a stored
document or message is the one that was sent (a signature over it must still hold).
"""

from __future__ import annotations

import re
from typing import Any

from fhirvault.fhir.attachments import AttachmentWalk, element_walker

# The primitive types that hold links (R4 datatypes.html); canonical is a uri. An oid or uuid element keeps its
# value: `Patient/123` is neither, and would make the resource invalid.
LINK_TYPES = frozenset({"uri", "url", "canonical"})
NARRATIVE_LINK = re.compile(r'\b(href|src)\s*=\s*(["\'])(.*?)\2')


def replace_links(resource: dict[str, Any], mapping: dict[str, str],
                  unresolved: list[str] | None = None) -> dict[str, Any]:
    """A copy of `resource` (a FHIR resource as parsed JSON) with each link equal to a key of `mapping`
    replaced by its value: Reference.reference, elements of the link types, and the narrative's `href` and
    `src` attributes. A Bundle comes back as it is. Each Reference.reference left as a `urn:uuid:`
    placeholder (one that names no entry) is appended to `unresolved`, when given."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or rtype == "Bundle":
        return resource
    return _element(element_walker(), resource, rtype, mapping, unresolved)


def _element(walk: AttachmentWalk, node: dict[str, Any], owner: str, mapping: dict[str, str],
             unresolved: list[str] | None) -> dict[str, Any]:
    return {key: _value(walk, value, owner, key, mapping, unresolved) for key, value in node.items()}


def _value(walk: AttachmentWalk, value: Any, owner: str, key: str, mapping: dict[str, str],
           unresolved: list[str] | None) -> Any:
    if isinstance(value, list):
        return [_value(walk, item, owner, key, mapping, unresolved) for item in value]
    if key == "resourceType":
        return value
    # `_birthDate` holds the id and extensions of a primitive: an Element
    kind = ("type", "Element") if key.startswith("_") else walk.resolve(owner, key)
    if kind is None:
        return value
    what, name = kind
    if isinstance(value, str):
        if owner == "Reference" and key == "reference":
            replaced = mapping.get(value, value)
            if unresolved is not None and replaced[:9].lower() == "urn:uuid:":
                unresolved.append(replaced)
            return replaced
        if what == "type" and name in LINK_TYPES:
            return mapping.get(value, value)
        if owner == "Narrative" and key == "div" and ("href" in value or "src" in value):
            return NARRATIVE_LINK.sub(lambda m: f"{m.group(1)}={m.group(2)}{mapping.get(m.group(3), m.group(3))}"
                                      f"{m.group(2)}", value)
        return value
    if not isinstance(value, dict):
        return value
    if what == "type" and name == "Resource":  # a contained resource, Parameters.parameter.resource, ...
        return replace_links(value, mapping, unresolved)
    return _element(walk, value, name, mapping, unresolved)
