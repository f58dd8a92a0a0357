"""The R4 SearchParameters of every resource type, from the generated table (scripts/gen_search_tables.py)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

# Parameters every resource type has (FHIR R4 3.1.1.2 "Parameters for all resources"). `_id` and
# `_lastUpdated` are answered from the resource row itself, the others from index rows.
ROW_PARAMS = ("_id", "_lastUpdated")
# R4 resources that are not DomainResources, and so have no narrative for `_text` (R4 resource.html).
NOT_DOMAIN_RESOURCES = frozenset({"Binary", "Bundle", "Parameters"})


@dataclass(frozen=True)
class Component:
    """One part of a composite parameter: the parameter it stands for and the FHIRPath from the element."""

    code: str
    type: str
    expr: str


@dataclass(frozen=True)
class SearchParam:
    """One R4 SearchParameter as it applies to one resource type.

    `expr` is the FHIRPath expression restricted to this type; `targets` the resource types a
    reference parameter may point at; `components` the parts of a composite parameter."""

    code: str
    type: str  # number | date | string | token | reference | quantity | uri | composite
    url: str
    expr: str
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()


@cache
def _table() -> dict[str, Any]:
    text = resources.files("fhirvault.fhir").joinpath("data/r4_search.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def _param(code: str, row: dict[str, Any]) -> SearchParam:
    return SearchParam(
        code=code, type=row["type"], url=row["url"], expr=row["expr"], targets=tuple(row.get("target", ())),
        components=tuple(Component(c["code"], c["type"], c["expr"]) for c in row.get("components", ())),
    )


@cache
def params_of(resource_type: str) -> dict[str, SearchParam]:
    """Every search parameter of `resource_type` by code, the common ones (`_id`, `_tag`, ...) included.
    An unknown type has only the common ones."""
    table = _table()["params"]
    out: dict[str, SearchParam] = {}
    for base in ("Resource", "DomainResource", resource_type):
        for code, row in table.get(base, {}).items():
            expr = row["expr"]
            if base != resource_type:
                # `Resource.meta.tag` read on this type
                expr = re.sub(rf"\b{base}\.", f"{resource_type}.", expr)
            out[code] = _param(code, {**row, "expr": expr})
    return out


def search_param(resource_type: str, code: str) -> SearchParam | None:
    """The parameter `code` of `resource_type`, or None when R4 defines no such parameter for it."""
    return params_of(resource_type).get(code)


def summary_elements(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(summary, mandatory): top-level element names flagged isSummary, and those with min > 0, from the
    type's R4 StructureDefinition; a choice element as `name[x]` (`value[x]`)."""
    row = _table()["elements"].get(resource_type, {"summary": [], "mandatory": []})
    return frozenset(row["summary"]), frozenset(row["mandatory"])


def choice_elements(resource_type: str) -> frozenset[str]:
    """The type's top-level choice elements, as `name[x]` (`value[x]`, `effective[x]`)."""
    return frozenset(_table()["elements"].get(resource_type, {}).get("choices", []))


@dataclass(frozen=True)
class NestedSummary:
    """What `_summary=true` drops below a type's top level (R4 3.1.1.5.8: only elements marked summary):
    `drops`, element path below the type (`component`, `content.attachment`) -> names not marked summary
    there (`interpretation`; an Attachment's `data`); `aliases`, a contentReference path -> the path whose
    definition it reuses (Questionnaire `item.item` -> `item`); `visit`, every path on the way to a drop."""

    drops: dict[str, frozenset[str]]
    aliases: dict[str, str]
    visit: frozenset[str]


@cache
def nested_summary(resource_type: str) -> NestedSummary:
    """The NestedSummary of `resource_type` (from its R4 StructureDefinition and the datatypes')."""
    row = _table()["elements"].get(resource_type, {})
    drops = {path: frozenset(names) for path, names in row.get("summaryDrops", {}).items()}
    visit = {".".join(path.split(".")[:i]) for path in drops for i in range(1, path.count(".") + 2)}
    return NestedSummary(drops, dict(row.get("aliases", {})), frozenset(visit))
