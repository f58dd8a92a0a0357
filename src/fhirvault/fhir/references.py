"""Parsing of FHIR references (`Patient/1`, `Patient/1/_history/2`, absolute URLs on our base)."""

from __future__ import annotations

import re
from typing import NamedTuple

from fhirvault.fhir.r4 import ID

_REL = re.compile(rf"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>{ID})(/_history/(?P<vid>[0-9]{{1,18}}))?\Z")


class Reference(NamedTuple):
    """A literal reference to a resource on this server: type, id and, for a versioned reference, the version
    id. A named tuple, so that hashing one (references key many look-ups on the read path) runs no Python
    code."""

    resource_type: str
    id: str
    version_id: str | None = None

    @property
    def relative(self) -> str:
        """"Type/id", without any version."""
        return f"{self.resource_type}/{self.id}"


def parse_reference(value: str, base_url: str | None = None) -> Reference | None:
    """A relative reference, or an absolute one on `base_url`; None for anything else."""
    if base_url and value.startswith(base_url.rstrip("/") + "/"):
        value = value[len(base_url.rstrip("/")) + 1 :]
    m = _REL.match(value)
    if not m:
        return None
    return Reference(m.group("type"), m.group("id"), m.group("vid"))
