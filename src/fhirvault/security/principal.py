"""Who is calling: the authenticated client, with the scopes its token grants."""

from __future__ import annotations

from dataclasses import dataclass

from fhirvault.security.scopes import ScopeSet


@dataclass(frozen=True)
class Principal:
    client_id: str
    scopes: ScopeSet
    patient: str | None = None  # "Patient/123": everything is limited to this patient's compartment

    @property
    def context(self) -> str:
        return "patient" if self.patient else "system"
