"""SMART on FHIR scopes: parsing v2 (`system/Patient.rs`) and v1 (`.read`/`.write`/`.*`), and coverage."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fhirvault.fhir.r4 import is_resource_type

LETTERS = "cruds"
# SMART v1 suffixes expressed as v2 letters.
V1_LETTERS = {"read": "rs", "write": "cud", "*": "cruds"}
# The letter an interaction needs (SMART v2: history is a kind of search).
INTERACTION_LETTER = {
    "create": "c", "read": "r", "vread": "r", "update": "u", "delete": "d", "search": "s", "history": "s",
    "binary-access-read": "r", "binary-access-write": "u",
}
CONTEXTS = ("system", "patient")
_SCOPE = re.compile(r"^(?P<ctx>[a-z]+)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perm>[a-z]+|\*)$")


class ScopeError(ValueError):
    """A scope string that is not a SMART resource scope this server understands."""


@dataclass(frozen=True)
class Scope:
    """One SMART resource scope (SMART App Launch 2.0, scopes for FHIR resources): `context/Type.letters`,
    with v1 suffixes already turned into v2 letters."""

    context: str  # "system" or "patient"
    resource_type: str  # a resource type or "*"
    letters: str  # a subset of "cruds", in that order
    text: str  # as written

    def covers(self, letter: str, resource_type: str | None) -> bool:
        """Whether this scope grants interaction `letter` (one of "cruds") on `resource_type` (None: on some
        type)."""
        if letter not in self.letters:
            return False
        return resource_type is None or self.resource_type in ("*", resource_type)


def parse_scope(text: str) -> Scope:
    """Parses one scope string (v2 `system/Patient.rs` or v1 `patient/*.read`) into a Scope. Raises ScopeError
    naming what is wrong: query parameters, an unknown context, a type that is not an R4 resource type,
    letters out of order."""
    if "?" in text:
        raise ScopeError(f"scope '{text}': query parameters in scopes are not supported")
    m = _SCOPE.match(text)
    if not m:
        raise ScopeError(f"scope '{text}' is not a SMART resource scope like system/Patient.rs")
    context, rtype, perm = m.group("ctx"), m.group("type"), m.group("perm")
    if context not in CONTEXTS:
        raise ScopeError(f"scope '{text}': context '{context}/' is not supported; use system/ or patient/")
    if rtype != "*" and not is_resource_type(rtype):
        raise ScopeError(f"scope '{text}': '{rtype}' is not an R4 resource type")
    if perm in V1_LETTERS:
        letters = V1_LETTERS[perm]
    else:
        it = iter(LETTERS)
        if not all(ch in it for ch in perm):  # a non-empty subsequence of "cruds", in order
            raise ScopeError(f"scope '{text}': permissions must be letters of 'cruds' in that order, "
                             "or read, write, *")
        letters = perm
    return Scope(context, rtype, letters, text)


@dataclass(frozen=True)
class ScopeSet:
    """The scopes a client holds or a token grants."""

    scopes: tuple[Scope, ...]

    @classmethod
    def parse(cls, text: str) -> ScopeSet:
        """Parses a space-separated scope list; raises ScopeError for the first bad scope."""
        return cls(tuple(parse_scope(s) for s in text.split()))

    @property
    def text(self) -> str:
        """The scopes as written, space-separated (the OAuth2 `scope` value)."""
        return " ".join(s.text for s in self.scopes)

    @property
    def contexts(self) -> set[str]:
        """The launch contexts the scopes use: a subset of {"system", "patient"}."""
        return {s.context for s in self.scopes}

    @property
    def is_admin(self) -> bool:
        """Whether a scope grants every interaction on every type at system level (`system/*.cruds`,
        `system/*.*`): what the administrative client holds."""
        return any(s.context == "system" and s.resource_type == "*" and s.letters == LETTERS for s in self.scopes)

    def allows(self, letter: str, resource_type: str | None) -> bool:
        """Whether some scope grants `letter` on `resource_type` (None: on any type)."""
        return any(s.covers(letter, resource_type) for s in self.scopes)

    def covers(self, wanted: Scope) -> bool:
        """Whether every permission of `wanted` is granted here (for narrowing at the token endpoint)."""
        for letter in wanted.letters:
            if not any(s.context == wanted.context and letter in s.letters
                       and s.resource_type in ("*", wanted.resource_type) for s in self.scopes):
                return False
        return True
