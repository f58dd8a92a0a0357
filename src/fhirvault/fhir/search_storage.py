"""Which index rows hold a search parameter's values: its own, or those of parameters that select the same.

Many R4 parameters of one type select values another parameter of the same type already selects, and
writing them again made the index larger than the resources it indexes (bench/search.py):

- the same expression: Patient `phonetic` and `name` (both `Patient.name`);
- a union of other parameters' expressions: Observation `combo-code` is `code | component-code`,
  `combo-value-quantity` is `value-quantity | component-value-quantity`;
- a composite over a union of others' elements with the same components: Observation
  `combo-code-value-quantity` is `code-value-quantity | component-code-value-quantity`;
- a reference parameter restricted to one target type: Observation `patient` is
  `Observation.subject.where(resolve() is Patient)`, the `subject` rows whose target is a Patient.

Such a parameter is *stored as* the others: it has no rows of its own and every query of it reads theirs.
Derived rows follow their parameter (`combo-code:text` is stored as `code:text` and
`component-code:text`), except `:identifier` rows of a type-restricted reference: a Reference that
has only an identifier has no target type, so those rows stay the parameter's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from fhirvault.fhir.search_params import ROW_PARAMS, params_of

_RESOLVE_IS = re.compile(r"^(?P<path>.+)\.where\(resolve\(\) is (?P<type>[A-Z][A-Za-z]+)\)$")


@dataclass(frozen=True)
class StoredAs:
    """The rows of a parameter: those of `params` (rows of the same kind), only the reference rows whose
    target is of `target_type` when that is set (FHIRPath `resolve() is T` on the reference text: the
    target starts with `T/` or contains `/T/`)."""

    params: tuple[str, ...]
    target_type: str | None = None


def _parts(expression: str) -> frozenset[str]:
    """The `|`-separated parts of an expression, without outer parentheses and spaces."""
    out = set()
    for part in expression.split("|"):
        part = part.strip()
        while part.startswith("(") and part.endswith(")") and part.count("(") == 1:
            part = part[1:-1].strip()
        out.add(re.sub(r"\s+", " ", part))
    return frozenset(out)


@cache
def _aliases(rtype: str) -> dict[str, StoredAs]:
    """Every parameter of `rtype` that is stored as others, by code (see the module docstring)."""
    params = {c: p for c, p in sorted(params_of(rtype).items()) if c not in ROW_PARAMS}
    parts = {c: _parts(p.expr) for c, p in params.items()}
    # rows are alike when the kind is: for composites, the components must read the same too
    kind = {c: (p.type, tuple((comp.type, comp.expr) for comp in p.components)) for c, p in params.items()}
    out: dict[str, StoredAs] = {}
    for code, param in params.items():
        own = [c for c in params if c != code and c not in out and kind[c] == kind[code]]
        same = [c for c in own if parts[c] == parts[code] and c < code]
        if same:
            out[code] = StoredAs((same[0],))
            continue
        if len(parts[code]) > 1:
            # a cover of this union by other parameters' (smaller, disjoint) unions, largest first
            cover: list[str] = []
            covered: set[str] = set()
            for c in sorted((c for c in own if parts[c] < parts[code]), key=lambda c: (-len(parts[c]), c)):
                if covered.isdisjoint(parts[c]):
                    cover.append(c)
                    covered |= parts[c]
            if covered == parts[code] and len(cover) > 1:
                out[code] = StoredAs(tuple(sorted(cover)))
                continue
        m = _RESOLVE_IS.match(param.expr.strip())
        if param.type == "reference" and m:
            base = [c for c in own if parts[c] == frozenset({m.group("path")})]
            if base:
                out[code] = StoredAs((base[0],), m.group("type"))
    # an alias of an alias never arises above (only parameters not yet aliased are used), but a
    # parameter used in a cover may be aliased later in the loop: resolve to the final rows
    return {code: _resolved(out, s) for code, s in out.items()}


def _resolved(aliases: dict[str, StoredAs], stored: StoredAs) -> StoredAs:
    params: list[str] = []
    target = stored.target_type
    for p in stored.params:
        inner = aliases.get(p)
        if inner is None:
            params.append(p)
            continue
        inner = _resolved(aliases, inner)
        params += inner.params
        target = target or inner.target_type
    return StoredAs(tuple(dict.fromkeys(params)), target)


def stored_as(rtype: str, code: str) -> StoredAs:
    """Where the rows of `code` (a parameter of `rtype`, or a derived code such as `code:text`) are:
    `StoredAs((code,))` for a parameter with rows of its own."""
    base, colon, suffix = code.partition(":")
    alias = _aliases(rtype).get(base)
    if alias is None or (colon and alias.target_type is not None):
        return StoredAs((code,))
    return StoredAs(tuple(f"{p}{colon}{suffix}" for p in alias.params), alias.target_type)


def has_own_rows(rtype: str, code: str) -> bool:
    """Whether the index writes rows under `code` (a parameter of `rtype` or a derived code)."""
    return stored_as(rtype, code) == StoredAs((code,))


def aliased_codes(rtype: str) -> list[str]:
    """The parameter codes of `rtype` without rows of their own (derived codes not listed)."""
    return sorted(_aliases(rtype))
