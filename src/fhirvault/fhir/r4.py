"""R4 tables generated from the HL7 definitions (see scripts/gen_fhir_tables.py)."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

# A resource id (R4 datatypes.html#id); `ID` is for building larger patterns.
ID = r"[A-Za-z0-9\-.]{1,64}"
# \Z, not $: `$` also matches before a final newline, which would let `x\n` pass as an id.
ID_PATTERN = re.compile(f"^{ID}\\Z")
# Whole numbers as they may appear in URLs and headers (version ids, _count, _offset): ASCII digits
# only (str.isdigit() also accepts '²', which int() refuses), and few enough to fit a 64-bit column.
_WHOLE_NUMBER = re.compile(r"^[0-9]{1,18}\Z")
FHIR_VERSION = "4.0.1"


@cache
def _tables() -> dict[str, Any]:
    text = resources.files("fhirvault.fhir").joinpath("data/r4_tables.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def resource_types() -> frozenset[str]:
    """The names of every R4 (4.0.1) resource type, from the generated table."""
    return frozenset(_tables()["resourceTypes"])


def is_resource_type(name: str) -> bool:
    """Whether `name` is an R4 resource type (case-sensitive, e.g. "Patient")."""
    return name in resource_types()


def is_valid_id(value: Any) -> bool:
    """Whether `value` is a string matching the R4 id datatype (1-64 of [A-Za-z0-9-.]; R4 2.24.0.1)."""
    return isinstance(value, str) and bool(ID_PATTERN.match(value))


def whole_number(text: str) -> int | None:
    """`text` as a non-negative integer below 10**18, or None when it is anything else."""
    return int(text) if _WHOLE_NUMBER.match(text) else None


def param_paths(resource_type: str, code: str) -> list[dict[str, str]]:
    """Element paths (and an optional target type) behind search parameter `code`; [] when absent."""
    paths: list[dict[str, str]] = _tables()["params"].get(resource_type, {}).get(code, [])
    return paths


def has_param(resource_type: str, code: str) -> bool:
    """Whether R4 defines search parameter `code` on `resource_type` in the generated path table."""
    return bool(param_paths(resource_type, code))


@cache
def _repeating() -> frozenset[str]:
    text = resources.files("fhirvault.fhir").joinpath("data/r4_repeating.json").read_text()
    return frozenset(json.loads(text)["repeating"])


def is_repeating(element_path: str) -> bool:
    """True when the R4 element at `element_path` (`Patient.name`, `HumanName.given`) has max cardinality `*`."""
    return element_path in _repeating()
