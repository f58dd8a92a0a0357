"""R4 tables generated from the HL7 definitions (see scripts/gen_fhir_tables.py)."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

# A resource id (R4 datatypes.html#id); `ID` is for building larger patterns.
ID = r"[A-Za-z0-9\-.]{1,64}"
ID_PATTERN = re.compile(f"^{ID}$")
FHIR_VERSION = "4.0.1"


@cache
def _tables() -> dict[str, Any]:
    text = resources.files("fhirvault.fhir").joinpath("data/r4_tables.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def resource_types() -> frozenset[str]:
    return frozenset(_tables()["resourceTypes"])


def is_resource_type(name: str) -> bool:
    return name in resource_types()


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str) and bool(ID_PATTERN.match(value))


def param_paths(resource_type: str, code: str) -> list[dict[str, str]]:
    """Element paths (and an optional target type) behind search parameter `code`; [] when absent."""
    paths: list[dict[str, str]] = _tables()["params"].get(resource_type, {}).get(code, [])
    return paths


def has_param(resource_type: str, code: str) -> bool:
    return bool(param_paths(resource_type, code))
