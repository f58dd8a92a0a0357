"""`_summary` and `_elements`: a resource cut down to some of its elements, tagged SUBSETTED (R4 3.1.1.5.8-9)."""

from __future__ import annotations

from typing import Any

from fhirvault.fhir.search_params import NestedSummary, choice_elements, nested_summary, summary_elements

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
_ALWAYS = ("resourceType", "id", "meta")


def _stem_of(key: str, names: frozenset[str]) -> bool:
    """Whether JSON key `key` is one of the element `names`: by its name, or for a choice element
    (`value[x]`) by one of its forms (`valueQuantity`). `status` is no choice, so `statusReason` is not it."""
    bare = key.lstrip("_")  # primitive extensions (`_birthDate`) go with their element
    if bare in names:
        return True
    return any(n.endswith("[x]") and bare.startswith(n[:-3]) and bare[len(n) - 3:len(n) - 2].isupper()
               for n in names)


def subset(resource: dict[str, Any], summary: str | None, elements: list[str] | None) -> dict[str, Any]:
    """A copy of `resource` holding only what `summary` (true | text | data; None: all) and `elements`
    (top-level element names, and the mandatory ones) ask for, with the SUBSETTED tag in meta. The
    resource itself when neither asks for anything."""
    if summary in (None, "false", "count") and not elements:
        return resource
    rtype = resource.get("resourceType", "")
    flagged, mandatory = summary_elements(rtype)
    if summary == "true":
        # the mandatory ones too, as for `_summary=text` and `_elements`, so that the summary is valid R4
        # (an Appointment's `participant`, a Provenance's `agent` are required but not summary)
        keep = flagged | mandatory
    elif summary == "text":
        keep = frozenset({"text"}) | mandatory
    elif summary == "data":
        keep = frozenset(k.lstrip("_") for k in resource if k != "text")
    else:
        # "Servers SHOULD always return mandatory elements whether they are requested or not" (3.1.1.5.9);
        # a requested name that is a choice (`value`) asks for its forms (`valueQuantity`)
        choices = {n[:-3] for n in choice_elements(rtype)}
        keep = frozenset(f"{e}[x]" if e in choices else e for e in elements or ()) | mandatory
    out = {k: v for k, v in resource.items() if k in _ALWAYS or _stem_of(k, keep)}
    if summary == "true":
        nested = nested_summary(rtype)
        for key in list(out):
            path = nested.aliases.get(key, key)
            if path in nested.visit:
                out[key] = _summarized(out[key], path, nested)
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag") or [] if not (isinstance(t, dict) and t.get("code") == "SUBSETTED")]
    meta["tag"] = [*tags, SUBSETTED]
    out["meta"] = meta
    return out


def _summarized(value: Any, path: str, nested: NestedSummary) -> Any:
    """`value` (the element at `path` below the type, one or a list) without the elements a summary drops
    there and below (see search_params.NestedSummary); ids and extensions stay."""
    if isinstance(value, list):
        return [_summarized(v, path, nested) for v in value]
    if not isinstance(value, dict):
        return value
    gone = nested.drops.get(path, frozenset())
    out = {}
    for key, child in value.items():
        if gone and _stem_of(key, gone):
            continue
        child_path = f"{path}.{key}"
        child_path = nested.aliases.get(child_path, child_path)
        out[key] = _summarized(child, child_path, nested) if child_path in nested.visit else child
    return out


def is_subsetted(resource: dict[str, Any]) -> bool:
    """Whether `resource` carries the SUBSETTED tag in meta.tag (any display)."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return isinstance(tags, list) and any(
        isinstance(t, dict) and t.get("system") == SUBSETTED["system"] and t.get("code") == SUBSETTED["code"]
        for t in tags)

