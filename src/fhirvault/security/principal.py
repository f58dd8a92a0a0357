"""Who is calling: an authenticated client with the scopes its token grants, or the server itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fhirvault.security.scopes import ScopeSet


@dataclass(frozen=True)
class Principal:
    """An authenticated OAuth2 client; `patient` ("Patient/123") limits everything to that compartment."""

    client_id: str
    scopes: ScopeSet
    patient: str | None = None  # "Patient/123": everything is limited to this patient's compartment

    @property
    def context(self) -> str:
        """The SMART scope context this client's scopes are written in: "patient" or "system"."""
        return "patient" if self.patient else "system"


@dataclass(frozen=True)
class SystemPrincipal:
    """The server acting on its own authority (background jobs, the command line, a signed storage URL,
    which carries its own authority); the access policy allows it everything. `reason` names who it
    stands for, for logs and debugging."""

    reason: str


SYSTEM_JOBS = SystemPrincipal("background job")
SYSTEM_SIGNED_URL = SystemPrincipal("signed storage URL")

Caller = Principal | SystemPrincipal


class CallerContext(Protocol):
    """What the access policy needs to know of a request: the caller, and the FHIR base URL that
    relative references are resolved against (e.g. https://host/fhir/R4)."""

    @property
    def principal(self) -> Caller:
        """Who is asking: an authenticated client's Principal, or a named SystemPrincipal for the server's own
        work."""

    @property
    def base_url(self) -> str:
        """The FHIR base URL without a trailing slash, e.g. https://host/fhir/R4."""
