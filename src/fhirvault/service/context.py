"""The request context every use case receives: who is calling, and our public base URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RequestContext:
    base_url: str  # the FHIR base, e.g. https://host/fhir/R4
    principal: Any = None  # the authenticated caller; None for trusted internal work
    handling_strict: bool = False
