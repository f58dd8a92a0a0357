"""Query parameters of a FHIR search turned into criteria, sort keys and result options (FHIR R4 3.1.1).

Every name, modifier and value is checked here: an unknown parameter is ignored and reported (or
refused with `Prefer: handling=strict`); an unsupported modifier or a malformed value is a 400 naming
the parameter and the value."""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from fhirvault.errors import Invalid
from fhirvault.fhir.dates import date_range
from fhirvault.fhir.r4 import is_resource_type, is_valid_id, whole_number
from fhirvault.fhir.references import parse_reference
from fhirvault.fhir.scan_definitions import SCAN_STATES
from fhirvault.fhir.search_filter import (
    Comparison,
    Expression,
    FilterSyntaxError,
    Logical,
    comparisons,
    parse_filter,
)
from fhirvault.fhir.search_index import (
    STRING_MAX,
    TEXT_PARAMS,
    code_systems,
    code_values,
    component_expression,
    normalize,
    value_types,
    words,
)
from fhirvault.fhir.search_params import NOT_DOMAIN_RESOURCES, SearchParam, search_param
from fhirvault.store.search_sql import (
    AllClause,
    AnyClause,
    ChainClause,
    Clause,
    CompositeTest,
    Criteria,
    HasClause,
    IdClause,
    ListClause,
    MissingClause,
    NearClause,
    NotClause,
    ParamClause,
    RangeTest,
    RefTest,
    ScanStatusClause,
    SortKey,
    StringTest,
    TermTest,
    Test,
    TokenTest,
    UpdatedClause,
    UriTest,
)

# Binary's custom search parameter: the malware scan verdict on its content (service/scans.py).
SCAN_STATUS_PARAM = "scan-status"
DEFAULT_COUNT = 20
MAX_COUNT = 1000
MAX_OR_VALUES = 100
MAX_PARAMS = 100  # each becomes SQL conditions; a query holds only so many (comparisons of a _filter too)
MAX_WORDS = 20  # words of one _text / _content value
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
SUMMARY_MODES = ("true", "text", "data", "count", "false")
# Result parameters (FHIR R4 3.1.1.5 and 3.1.1.6): they shape the answer rather than filter it.
RESULT_PARAMS = {"_count", "_offset", "_cursor", "_before", "_sort", "_summary", "_elements", "_total", "_include",
                 "_revinclude", "_format", "_pretty"}
_MODIFIERS = {
    "string": {"exact", "contains"},
    "token": {"not", "text", "of-type", "in", "not-in", "below", "above"},
    "uri": {"below", "above"},
}
# What a token modifier needs among the types of the elements a parameter reaches (search_index.value_types;
# R4 search.html#token): `:text` reads CodeableConcept.text, Coding.display or Identifier.type.text;
# `:of-type` an Identifier's type; `:in`, `:not-in`, `:below` and `:above` judge codes of a code system.
_TOKEN_MODIFIER_TYPES = {
    "text": (frozenset({"CodeableConcept", "Coding", "Identifier"}),
             "searches the text of a CodeableConcept, a Coding's display or an Identifier's type"),
    "of-type": (frozenset({"Identifier"}), "applies only to identifiers"),
    **{m: (frozenset({"code", "Coding", "CodeableConcept"}), "applies only to coded values")
       for m in ("in", "not-in", "below", "above")},
}
BOOLEAN_CODES = ("true", "false")


# `near` distances: UCUM units of length and their kilometres (R4 location.html#positional; km by default).
DISTANCE_UNITS = {"km": 1.0, "m": 0.001, "[mi_i]": 1.609344, "mi": 1.609344, "[mi_us]": 1.6093472,
                  "[nmi_i]": 1.852}
NEAR_DEFAULT_KM = 5.0  # the distance when `near` gives none: "the server can use its own discretion"


class UnknownParameter(Exception):
    """A parameter R4 does not define for the searched type(s), or one fhirvault does not index."""


@dataclass(frozen=True)
class Include:
    """`_include` (source = the matches' type) or `_revinclude` (source = the including type)."""

    source_type: str  # "*" for every type (`_include=*`, `_revinclude=*`)
    param: str | None  # None: every reference parameter
    target_type: str | None
    iterate: bool


@dataclass
class ParsedSearch:
    """A whole search request, checked and ready to run."""

    criteria: Criteria
    sort: list[SortKey] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    after: list[Any] | None = None  # `_cursor`: the sort values of the previous page's last resource
    before: list[Any] | None = None  # `_before`: the sort values of the next page's first resource
    summary: str | None = None
    elements: list[str] | None = None
    total: str | None = None
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # honoured, but to no effect (an include of another type)
    echo: list[tuple[str, str]] = field(default_factory=list)  # honoured parameters, for links


# -- value syntax -----------------------------------------------------------------------------------
def split_escaped(value: str, sep: str) -> list[str]:
    """`value` split at `sep` not preceded by a backslash; `\\,` `\\|` `\\$` `\\\\` unescaped."""
    parts, cur, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            cur.append(ch + value[i + 1])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape(value: str) -> str:
    r"""A search value with its backslash escapes (R4 search 3.1.1.8: `\,`, `\$`, `\|`, `\\`) undone."""
    return re.sub(r"\\(.)", r"\1", value)


def _or_values(name: str, value: str) -> list[str]:
    values = split_escaped(value, ",")
    if len(values) > MAX_OR_VALUES:
        raise Invalid(f"Search parameter {name} has {len(values)} comma-separated values; at most "
                      f"{MAX_OR_VALUES} are allowed")
    if any(v == "" for v in values):
        raise Invalid(f"Search parameter {name}={value!r} has an empty value")
    return values


def _prefixed(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and not value[2].isalpha():
        return value[:2], value[2:]
    return "eq", value


# A search number (R4 search.html#number: a decimal, with an exponent if wanted), in ASCII digits.
_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?|[+-]?\.[0-9]+([eE][+-]?[0-9]+)?", re.ASCII)


def _number_test(name: str, raw: str, system: str | None = None, code: str | None = None) -> RangeTest:
    prefix, text = _prefixed(raw)
    if not _NUMBER.fullmatch(text):  # Decimal would also take `Infinity`, `NaN`, `1_000` and non-ASCII digits
        raise Invalid(f"Search parameter {name}={raw!r}: '{text}' is not a number")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise Invalid(f"Search parameter {name}={raw!r}: '{text}' is not a number") from None
    if not number.is_finite() or math.isinf(float(number)):
        raise Invalid(f"Search parameter {name}={raw!r}: '{text}' is beyond the numbers this server compares "
                      "(doubles, up to about 1.8e308)")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5) * Decimal(10) ** (exponent - 1)  # the value's implied precision (3.1.1.4.1)
    low, high, value = float(number - half), float(number + half), float(number)
    if high <= value:
        # More digits than a double holds: the range's upper end rounds to the double the value itself is stored
        # as, and [low, high) would not hold that value.
        high = math.nextafter(value, math.inf)
    return RangeTest(prefix, low, high, value, system, code)


def _date_test(name: str, raw: str) -> RangeTest:
    prefix, text = _prefixed(raw)
    try:
        low, high = date_range(text)
    except ValueError:
        raise Invalid(f"Search parameter {name}={raw!r}: '{text}' is not a FHIR date "
                      "(e.g. 2025, 2025-03, 2025-03-04 or 2025-03-04T10:00:00Z)") from None
    if prefix == "ap":
        # "approximately": 10% of the distance from now, at least the value's own width
        now = time.time_ns() // 1000
        margin = max(abs(now - low) // 10, high - low)
        low, high = low - margin, high + margin
    # whole microseconds, as the BIGINT columns hold them: a float would make PostgreSQL compare the columns
    # as numeric, which no index of theirs serves
    return RangeTest(prefix, low, high, low)


def _quantity_test(name: str, raw: str) -> RangeTest:
    parts = split_escaped(raw, "|")
    if len(parts) not in (1, 3):
        raise Invalid(f"Search parameter {name}={raw!r} is not a quantity like 5.4|http://unitsofmeasure.org|mg")
    system = unescape(parts[1]) if len(parts) == 3 and parts[1] else None
    code = unescape(parts[2]) if len(parts) == 3 and parts[2] else None
    return _number_test(name, parts[0], system, code)


def _token_test(raw: str) -> TokenTest:
    parts = split_escaped(raw, "|")
    if len(parts) == 1:
        return TokenTest(None, unescape(raw))
    system, code = unescape(parts[0]), unescape("|".join(parts[1:]))
    return TokenTest(system, code or None)  # "|code": no system; "system|": any code


# Whether this search refuses codes outside their required value sets (parse_search `codes_validated`).
_CODES_JUDGED: ContextVar[bool] = ContextVar("fhirvault_codes_judged", default=True)


@dataclass(frozen=True)
class TokenReach:
    """What the elements of a token parameter hold: their FHIR types (search_index.value_types) and, when
    all are `code`s with a required binding, the code systems implied (search_index.code_systems). None:
    not known, nothing is judged."""

    types: frozenset[str] | None
    systems: frozenset[str] | None = None
    codes: frozenset[str] | None = None

    @staticmethod
    def of(expressions: list[str | None]) -> TokenReach:
        """The reach of values selected by any of `expressions` (one per searched type)."""
        types: set[str] = set()
        systems: set[str] | None = set()
        codes: set[str] | None = set()
        for expr in expressions:
            reached = value_types(expr) if expr is not None else None
            if reached is None or expr is None:
                return TokenReach(None)
            types |= reached
            implied = code_systems(expr)
            systems = None if implied is None or systems is None else systems | implied
            allowed = code_values(expr)
            codes = None if allowed is None or codes is None else codes | allowed
        return TokenReach(frozenset(types), frozenset(systems) if systems else None,
                          frozenset(codes) if codes else None)


@lru_cache(maxsize=4096)
def token_reach(types: tuple[str, ...], code: str) -> TokenReach:
    """The TokenReach of the token parameter `code` on `types` (joined over the types of a system search).
    Cached: each (types, code) is worked out once per process."""
    params = [search_param(rtype, code) for rtype in types]
    return TokenReach.of([p.expr if p is not None and p.type == "token" else None for p in params])


def _check_token_modifier(name: str, modifier: str, reach: TokenReach) -> None:
    """400 for a token modifier that cannot apply to the elements the parameter reaches (R4 search.html#token:
    `:of-type` "only for identifier", `:text` on text that booleans or codes do not have)."""
    needed = _TOKEN_MODIFIER_TYPES.get(modifier)
    if needed is None or reach.types is None or reach.types & needed[0]:
        return
    raise Invalid(f"Search parameter {name}: modifier '{modifier}' {needed[1]}; {name.partition(':')[0]} "
                  f"searches {' or '.join(sorted(reach.types))} values")


def _judged_token_test(name: str, raw: str, reach: TokenReach) -> TokenTest:
    """A token value judged by what the parameter's elements hold (R4 search.html#token); a value that could
    never match is a 400 rather than an empty answer:
    - booleans only: `true` or `false`, with no system (`|true` is accepted: no system);
    - `code`s only, with required bindings: a code carries no system of its own, its binding implies it
      (datatypes.html#code), so `http://hl7.org/fhir/administrative-gender|female` searches the code
      `female` (as `|female` does), and a system the bindings do not draw from is refused;
    - `code`s only, with enumerated required value sets: a code outside them (`gender=males`) is refused,
      since validation never stores it (terminologies.html#required)."""
    test = _token_test(raw)
    param = name.partition(":")[0]
    if reach.types == frozenset({"boolean"}):
        if test.code not in BOOLEAN_CODES:
            raise Invalid(f"Search parameter {name}={raw!r}: '{test.code or ''}' is not a boolean; "
                          f"{param} searches a boolean element: use true or false")
        if test.system:
            raise Invalid(f"Search parameter {name}={raw!r}: a boolean has no code system; use true or false")
        return test
    if reach.systems and test.system and test.system not in reach.systems:
        raise Invalid(f"Search parameter {name}={raw!r}: {param} searches codes of "
                      f"{' or '.join(sorted(reach.systems))}, not of {test.system}")
    if reach.codes and test.code is not None and test.code not in reach.codes \
            and (not test.system or reach.systems) and _CODES_JUDGED.get():
        # a code outside a required value set: valid data never holds it (R4 terminologies.html#required)
        known = sorted(reach.codes)
        listed = ", ".join(known[:40]) + (f" and {len(known) - 40} more" if len(known) > 40 else "")
        raise Invalid(f"Search parameter {name}={raw!r}: '{test.code}' is not a code {param} can hold; "
                      f"its required value set has {listed}")
    if reach.systems and test.system:
        return TokenTest("", test.code)  # stored without a system: the binding's is implied
    return test


def _ref_test(name: str, param: SearchParam, modifier: str, raw: str, base_url: str) -> RefTest:
    value = unescape(raw)
    ref = parse_reference(value, base_url)
    if ref is not None:
        if modifier and ref.resource_type != modifier:
            raise Invalid(f"Search parameter {name}={raw!r} names a {ref.resource_type}, not a {modifier}")
        return RefTest((ref.relative,))
    if is_valid_id(value) and "/" not in value:
        types = [modifier] if modifier else list(param.targets)
        if not types:
            raise Invalid(f"Search parameter {name}={raw!r}: give the type as well (e.g. Patient/{value})")
        return RefTest(tuple(f"{t}/{value}" for t in types))
    if "://" in value or value.startswith("urn:"):
        return RefTest((value.split("|", 1)[0],))  # a reference to elsewhere, or a canonical URL
    raise Invalid(f"Search parameter {name}={raw!r} is not a reference like Patient/123")


def _string_test(name: str, modifier: str, raw: str) -> StringTest:
    """A string value (R4 search.html#string). The index keeps the first STRING_MAX characters of each
    normalized string, so a longer value (but for `:exact`, which compares whole texts) is a 400 rather
    than a comparison that would miss, or find values that only begin alike."""
    value = unescape(raw)
    if modifier == "exact":
        return StringTest("exact", value)
    folded = normalize(value)
    if len(folded) > STRING_MAX:
        raise Invalid(f"Search parameter {name}: a string is compared on its first {STRING_MAX} characters, and "
                      f"this value has {len(folded)}; give at most {STRING_MAX}, or use :exact")
    return StringTest("contains" if modifier == "contains" else "start", folded)


def _value_test(name: str, param: SearchParam, kind: str, modifier: str, raw: str, base_url: str,
                reach: TokenReach | None = None) -> Test:
    """One value in the syntax of `kind`; `reach`: for a token, what its elements hold."""
    if kind == "string":
        return _string_test(name, modifier, raw)
    if kind == "token":
        return _judged_token_test(name, raw, reach or TokenReach(None))
    if kind == "reference":
        return _ref_test(name, param, modifier, raw, base_url)
    if kind == "date":
        return _date_test(name, raw)
    if kind == "number":
        return _number_test(name, raw)
    if kind == "quantity":
        return _quantity_test(name, raw)
    if kind == "uri":
        return UriTest(modifier or "eq", unescape(raw))
    raise Invalid(f"Search parameter {name} has a type ({kind}) that cannot be searched this way")


def composite_kind(param: SearchParam) -> str:
    """The index a composite parameter lives in: `composite` (two components) or `composite-parts`."""
    return "composite" if len(param.components) == 2 else "composite-parts"


def _composite_test(types: list[str], name: str, param: SearchParam, raw: str, base_url: str) -> CompositeTest:
    """`a$b[$c...]`: one value per component, each in its component's syntax, prefixes included
    (R4 3.1.1.4.9; a `$` inside a value is escaped as `\\$`)."""
    parts = split_escaped(raw, "$")
    if len(parts) != len(param.components):
        raise Invalid(f"Search parameter {name}={raw!r} needs {len(param.components)} values joined by '$' "
                      f"({'$'.join(c.code for c in param.components)})")
    tests = []
    for comp, part in zip(param.components, parts, strict=True):
        if part == "":
            raise Invalid(f"Search parameter {name}={raw!r} has no value for its component {comp.code}")
        component = search_param(types[0], comp.code)  # its targets, for a reference component
        reach = TokenReach.of([component_expression(param, comp)]) if comp.type == "token" else None
        tests.append(_value_test(f"{name} ({comp.code})", component or param, comp.type, "", part, base_url,
                                 reach))
    return CompositeTest(tuple(tests), tuple(c.type for c in param.components))


# -- one criterion --------------------------------------------------------------------------------
def _param_for(types: list[str], code: str) -> SearchParam:
    found = [search_param(t, code) for t in types]
    if not found or any(p is None for p in found):
        raise UnknownParameter(code)
    first = found[0]
    assert first is not None
    if any(p is not None and p.type != first.type for p in found):
        raise UnknownParameter(code)
    return first


def _any(clauses: list[Clause]) -> Clause:
    return clauses[0] if len(clauses) == 1 else AnyClause(clauses)


def _parse_words(types: list[str], name: str, code: str, modifier: str, value: str) -> Clause:
    """`_text` / `_content` (R4 search.html#content): each value matches when every one of its words
    starts a word of the narrative / of the resource's text, case and accents aside; commas are OR."""
    if code == "_text" and any(t in NOT_DOMAIN_RESOURCES for t in types):
        raise UnknownParameter(name)
    if modifier:
        raise Invalid(f"Search parameter {name}: {code} takes no modifier")
    alternatives: list[Clause] = []
    for v in _or_values(name, value):
        found = sorted(words(unescape(v)))
        if not found:
            raise Invalid(f"Search parameter {name}={v!r} holds no word to search for")
        if len(found) > MAX_WORDS:
            raise Invalid(f"Search parameter {name}={v!r} has {len(found)} words; at most {MAX_WORDS} are searched for")
        clauses: list[Clause] = [ParamClause("string", code, [StringTest("start", w)]) for w in found]
        alternatives.append(clauses[0] if len(clauses) == 1 else AllClause(clauses))
    return _any(alternatives)


def _parse_list(name: str, modifier: str, value: str, base_url: str) -> Clause:
    """`_list=List/id` (or the bare id): the items of that List (R4 search.html#list)."""
    if modifier:
        raise Invalid(f"Search parameter {name}: _list takes no modifier")
    ids = []
    for v in _or_values(name, value):
        v = unescape(v)
        if v.startswith("$"):
            raise Invalid(f"Search parameter _list={v!r}: functional lists ($current-...) are not supported")
        ref = parse_reference(v, base_url)
        if ref is not None and ref.resource_type != "List":
            raise Invalid(f"Search parameter _list={v!r} names a {ref.resource_type}, not a List")
        rid = ref.id if ref is not None else v
        if not is_valid_id(rid):
            raise Invalid(f"Search parameter _list={v!r} is not a List id or List/[id]")
        ids.append(rid)
    return ListClause(ids)


def _parse_near(name: str, modifier: str, value: str) -> Clause:
    """`near=latitude|longitude|distance|units` on Location (R4 location.html#positional)."""
    if modifier:
        raise Invalid(f"Search parameter {name}: near takes no modifier")
    out: list[Clause] = []
    for v in _or_values(name, value):
        parts = [unescape(p) for p in split_escaped(v, "|")]
        if not 2 <= len(parts) <= 4:
            raise Invalid(f"Search parameter near={v!r} must be latitude|longitude[|distance[|units]]")
        try:
            lat, lon = float(Decimal(parts[0])), float(Decimal(parts[1]))
            distance = float(Decimal(parts[2])) if len(parts) > 2 and parts[2] else NEAR_DEFAULT_KM
        except InvalidOperation:
            raise Invalid(f"Search parameter near={v!r}: latitude, longitude and distance must be numbers") \
                from None
        units = parts[3] if len(parts) > 3 and parts[3] else "km"
        if units not in DISTANCE_UNITS:
            raise Invalid(f"Search parameter near={v!r}: unit '{units}' is not one of {', '.join(DISTANCE_UNITS)}")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180) or not distance >= 0 or math.isinf(distance):
            raise Invalid(f"Search parameter near={v!r}: latitude must lie in [-90, 90], longitude in "
                          "[-180, 180], and the distance must be a number of at least 0")
        out.append(NearClause(lat, lon, distance * DISTANCE_UNITS[units]))
    return _any(out)


def parse_criterion(types: list[str], name: str, value: str, base_url: str) -> Clause:
    """One `name=value` filter on resources of `types`. Raises UnknownParameter or Invalid."""
    if name.startswith("_has:"):
        return _parse_has(types, name, value, base_url)
    head, dot, rest = name.partition(".")
    code, colon, modifier = head.partition(":")
    if colon and not modifier:
        raise Invalid(f"Search parameter {name}: an empty modifier; write {code} alone, or {code}:<modifier>")
    if not dot and code in ("_text", "_content"):
        return _parse_words(types, name, code, modifier, value)
    if not dot and code == "_list":
        return _parse_list(name, modifier, value, base_url)
    if not dot and code == "near" and types == ["Location"]:
        return _parse_near(name, modifier, value)
    if not dot and code == "_filter":
        if modifier:
            raise Invalid(f"Search parameter {name}: _filter takes no modifier")
        return _parse_filter(types, value, base_url)
    if code in ("_id", "_lastUpdated") and not dot and modifier == "missing":
        if value not in ("true", "false"):
            raise Invalid(f"Search parameter {name}={value!r} must be true or false")
        # every resource has an id and a lastUpdated: none is missing one
        return NotClause(AllClause([])) if value == "true" else AllClause([])
    if code == "_id" and not dot:
        # _id is a token (R4 search.html#id): of the token modifiers, only :not (and :missing, above) can
        # apply to a bare id
        if modifier and modifier != "not":
            raise Invalid(f"Search parameter {name}: modifier '{modifier}' is not supported for _id "
                          "(it takes :not and :missing)")
        ids = [unescape(v) for v in _or_values(name, value)]
        bad = [i for i in ids if not is_valid_id(i)]
        if bad:
            raise Invalid(f"Search parameter {name}={value!r}: '{bad[0]}' is not a valid resource id")
        return NotClause(IdClause(ids)) if modifier == "not" else IdClause(ids)
    if code == SCAN_STATUS_PARAM and types == ["Binary"] and not dot:
        return _scan_status(name, modifier, value)
    if code == "_lastUpdated" and not dot and modifier != "missing":
        if modifier:
            raise Invalid(f"Search parameter {name}: modifier '{modifier}' is not supported for a date")
        return UpdatedClause([_date_test(name, v) for v in _or_values(name, value)])
    param = _param_for(types, code)
    kind = param.type
    if dot:
        return _parse_chain(types, name, param, modifier, rest, value, base_url)
    if modifier == "missing":
        if value not in ("true", "false"):
            raise Invalid(f"Search parameter {name}={value!r} must be true or false")
        return MissingClause(composite_kind(param) if kind == "composite" else kind, code, value == "true")
    if modifier and not (modifier in _MODIFIERS.get(kind, set())
                         or (kind == "reference" and (modifier == "identifier" or is_resource_type(modifier)))):
        raise Invalid(f"Search parameter {name}: modifier '{modifier}' is not supported for a {kind} parameter")
    if kind == "reference" and modifier and modifier != "identifier" and param.targets and \
            modifier not in param.targets:
        raise Invalid(f"Search parameter {name}: {code} does not refer to {modifier}")
    reach = token_reach(tuple(types), code) if kind == "token" else None
    if reach is not None:
        _check_token_modifier(name, modifier, reach)
    values = _or_values(name, value)
    if kind == "composite":
        return ParamClause(composite_kind(param), code, [_composite_test(types, name, param, v, base_url)
                                                             for v in values])
    if kind == "token" and modifier == "text":
        return ParamClause("string", f"{code}:text", [_string_test(name, "", v) for v in values])
    if kind == "token" and modifier == "of-type":
        tests: list[Test] = []
        for v in values:
            parts = split_escaped(v, "|")
            if len(parts) != 3 or not all(parts):
                raise Invalid(f"Search parameter {name}={v!r} must be typesystem|typecode|value")
            tests.append(TokenTest(unescape(parts[0]), f"{unescape(parts[1])}|{unescape(parts[2])}"))
        return ParamClause("token", f"{code}:of-type", tests)
    if kind == "reference" and modifier == "identifier":
        return ParamClause("token", f"{code}:identifier", [_token_test(v) for v in values])
    if kind == "token" and modifier in ("in", "not-in", "below", "above"):
        if modifier in ("below", "above") and any(len(split_escaped(v, "|")) != 2 or not all(split_escaped(v, "|"))
                                                  for v in values):
            raise Invalid(f"Search parameter {name}={value!r}: give system|code, the code system's url and a code")
        mode = "in" if modifier == "not-in" else modifier
        implied = tuple(sorted(reach.systems)) if reach is not None and reach.systems else ()
        if mode != "in" and implied:
            foreign = [v for v in values if unescape(split_escaped(v, "|")[0]) not in implied]
            if foreign:
                raise Invalid(f"Search parameter {name}={foreign[0]!r}: {code} searches codes of "
                              f"{' or '.join(implied)}, not of {unescape(split_escaped(foreign[0], '|')[0])}")
        return ParamClause("token", code, [TermTest(mode, unescape(v) if mode == "in" else v, implied)
                                           for v in values], negate=modifier == "not-in")
    tests = [_value_test(name, param, kind, modifier, v, base_url, reach) for v in values]
    return ParamClause(kind, code, tests, negate=modifier == "not")


def _scan_status(name: str, modifier: str, value: str) -> Clause:
    """Binary's custom token parameter `scan-status` (codes of SCAN_STATES, no system), with the token
    modifiers that apply to a code without a system: `:not` (none of the states) and `:missing` (true: the
    Binary holds no content that is scanned, e.g. an empty one)."""
    if modifier == "missing":
        if value not in ("true", "false"):
            raise Invalid(f"Search parameter {name}={value!r}: :missing takes true or false")
        return ScanStatusClause([], missing=value == "true")
    if modifier not in ("", "not"):
        raise Invalid(f"Search parameter {name}: {SCAN_STATUS_PARAM} takes no modifier but :not and :missing")
    states = [unescape(v) for v in _or_values(name, value)]
    bad = [s for s in states if s not in SCAN_STATES]
    if bad:
        raise Invalid(f"Search parameter {name}={value!r}: '{bad[0]}' is not a scan status; use one of "
                      f"{', '.join(SCAN_STATES)}")
    clause = ScanStatusClause(states)
    return NotClause(clause) if modifier == "not" else clause


# -- _filter (R4 search_filter.html) -------------------------------------------------------------------
_RANGE_OPS = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


def _parse_filter(types: list[str], value: str, base_url: str) -> Clause:
    """A `_filter` expression as criteria: the same clauses and SQL as the plain parameters. Every
    parameter in it must exist (an unknown one is a 400 whatever the handling: ignoring part of a
    logical expression would change its meaning)."""
    try:
        tree = parse_filter(value)
    except FilterSyntaxError as exc:
        raise Invalid(f"_filter={value!r}: {exc}") from None
    if comparisons(tree) > MAX_PARAMS:
        raise Invalid(f"_filter has {comparisons(tree)} comparisons; at most {MAX_PARAMS} are allowed")
    return _filter_clause(types, tree, base_url)


def _filter_clause(types: list[str], tree: Expression, base_url: str) -> Clause:
    if isinstance(tree, Logical):
        parts = [_filter_clause(types, p, base_url) for p in tree.parts]
        return AllClause(parts) if tree.op == "and" else AnyClause(parts)
    if not isinstance(tree, Comparison):
        return NotClause(_filter_clause(types, tree.part, base_url))
    if "[" in tree.path:
        raise Invalid(f"_filter: the path '{tree.path}' filters inside a parameter ([...]), which is not supported")
    head, dot, rest = tree.path.partition(".")
    try:
        if dot:
            param = _param_for(types, head)
            if param.type != "reference":
                raise Invalid(f"_filter: '{head}' in '{tree.path}' is no reference parameter to chain through")
            next_code = rest.partition(".")[0]
            targets = [t for t in param.targets if search_param(t, next_code) is not None]
            if not targets:
                raise UnknownParameter(tree.path)
            inner = _filter_clause(targets, Comparison(rest, tree.op, tree.value), base_url)
            return ChainClause(param.code, targets, Criteria(targets, [inner]))
        return _filter_leaf(types, tree, base_url)
    except UnknownParameter:
        raise Invalid(f"_filter: '{tree.path}' is not a search parameter of {', '.join(types)}") from None


def _filter_leaf(types: list[str], c: Comparison, base_url: str) -> Clause:
    """One `param op value` on `types` (no chain left), by the parameter's type (search_filter.html#ops)."""
    code, op, raw = c.path, c.op, c.value
    text = raw.replace("\\", "\\\\").replace(",", "\\,")  # literal: no OR, no escapes of our own
    name = f"_filter {code} {op}"
    if code in ("_id", "_list", "_text", "_content"):
        if op == "ne":
            return NotClause(_filter_leaf(types, Comparison(code, "eq", raw), base_url))
        if op != "eq" and not (code in ("_text", "_content") and op in ("co", "sw")):
            raise Invalid(f"{name}: the operator does not apply to {code}")
        return parse_criterion(types, code, text, base_url)
    kind = "date" if code == "_lastUpdated" else _param_for(types, code).type
    if op == "pr":
        if raw not in ("true", "false"):
            raise Invalid(f"{name} {raw}: pr takes true or false")
        if code == "_lastUpdated":  # every resource has one
            return AllClause([]) if raw == "true" else NotClause(AllClause([]))
        return parse_criterion(types, f"{code}:missing", "false" if raw == "true" else "true", base_url)
    if kind in ("date", "number", "quantity"):
        if op == "po" and kind == "date" and code != "_lastUpdated":
            # "the period overlaps": a prefix of _filter only
            return ParamClause("date", code, [replace(_date_test(name, raw), prefix="po")])
        if op not in _RANGE_OPS:
            raise Invalid(f"{name}: a {kind} parameter takes {', '.join(_RANGE_OPS)} or pr"
                          f"{' or po' if kind == 'date' and code != '_lastUpdated' else ''}")
        return parse_criterion(types, code, f"{op}{text}", base_url)
    if op == "ne":
        return NotClause(_filter_leaf(types, Comparison(code, "eq", raw), base_url))
    if kind == "string":
        mode = {"eq": "equal", "sw": "start", "co": "contains", "ew": "end"}.get(op)
        if mode is None:
            raise Invalid(f"{name}: a string parameter takes eq, ne, co, sw, ew or pr")
        return ParamClause("string", code, [StringTest(mode, normalize(raw))])
    if kind == "token":
        modifier = {"eq": "", "in": ":in", "ni": ":not-in", "sb": ":below", "ss": ":above"}.get(op)
        if modifier is None:
            raise Invalid(f"{name}: a token parameter takes eq, ne, in, ni, sb, ss or pr")
        return parse_criterion(types, code + modifier, text, base_url)
    if kind == "reference" and op in ("eq", "re"):
        return parse_criterion(types, code, text, base_url)
    if kind == "uri" and op in ("eq", "sb", "ss"):
        return parse_criterion(types, code + {"eq": "", "sb": ":below", "ss": ":above"}[op], text, base_url)
    if kind == "composite" and op == "eq":
        return parse_criterion(types, code, text, base_url)
    raise Invalid(f"{name}: the operator does not apply to a {kind} parameter")


def _parse_chain(types: list[str], name: str, param: SearchParam, modifier: str, rest: str, value: str,
                 base_url: str) -> Clause:
    if param.type != "reference":
        raise Invalid(f"Search parameter {name}: only reference parameters can be chained")
    if name.count(".") > 2:
        raise Invalid(f"Search parameter {name}: chains may be at most 3 parameters long")
    if modifier:
        if not is_resource_type(modifier):
            raise Invalid(f"Search parameter {name}: '{modifier}' is not a resource type")
        targets = [modifier]
    else:
        next_code = rest.partition(".")[0].partition(":")[0]
        targets = [t for t in param.targets if search_param(t, next_code) is not None]
        if not targets:
            raise UnknownParameter(name)
    inner = parse_criterion(targets, rest, value, base_url)
    return ChainClause(param.code, targets, Criteria(targets, [inner]))


def _parse_has(types: list[str], name: str, value: str, base_url: str) -> Clause:
    # _has:Observation:patient:code=1234 (the rest may itself be a _has)
    parts = name.split(":", 3)
    if len(parts) < 4 or not is_resource_type(parts[1]):
        raise Invalid(f"Search parameter {name} must look like _has:Type:reference:parameter")
    source, ref_code, rest = parts[1], parts[2], parts[3]
    ref = search_param(source, ref_code)
    if ref is None or ref.type != "reference":
        raise Invalid(f"Search parameter {name}: {source} has no reference parameter '{ref_code}'")
    if ref.targets and not any(t in ref.targets for t in types):
        raise Invalid(f"Search parameter {name}: {source}.{ref_code} does not refer to {', '.join(types)}")
    inner = parse_criterion([source], rest, value, base_url)
    return HasClause(source, ref_code, Criteria([source], [inner]))


# -- result parameters -----------------------------------------------------------------------------
def whole_param(name: str, value: str, lo: int, hi: int | None = None) -> int:
    """A whole-number parameter (`_count`, `_offset`) of at least `lo`, capped at `hi`. Raises Invalid
    naming it for anything else."""
    n = whole_number(value)
    if n is None:
        raise Invalid(f"Parameter {name}={value!r} must be a whole number (at most 18 digits)")
    if n < lo:
        raise Invalid(f"Parameter {name}={value} must be at least {lo}")
    return min(n, hi) if hi is not None else n


def summary_mode(value: str | None, modes: tuple[str, ...] = SUMMARY_MODES) -> str | None:
    """`_summary`'s value (None when absent) when it is one of `modes` (a read takes all but `count`);
    Invalid naming it otherwise (R4 3.1.1.5.8)."""
    if value is not None and value not in modes:
        raise Invalid(f"_summary={value!r} is not one of {', '.join(modes)}")
    return value


def _sort_keys(types: list[str], value: str) -> list[SortKey]:
    keys = []
    for item in value.split(","):
        item = item.strip()
        desc = item.startswith("-")
        code = item[1:] if desc else item  # one `-` only: `--family` names no parameter
        if code in ("_id", "_lastUpdated"):
            keys.append(SortKey(code, code, desc))
            continue
        try:
            param = _param_for(types, code)
        except UnknownParameter:
            raise Invalid(f"_sort={value}: '{code}' is not a search parameter of {', '.join(types)}") from None
        if param.type == "composite" and composite_kind(param) != "composite":
            raise Invalid(f"_sort={value}: '{code}' is a composite of {len(param.components)} components, "
                          "which has no order")
        keys.append(SortKey(param.type, code, desc))
    return keys


def _include(name: str, value: str, reverse: bool) -> Include:
    _, _, modifier = name.partition(":")
    if modifier not in ("", "iterate", "recurse"):
        raise Invalid(f"{name}: modifier '{modifier}' is not supported (only :iterate)")
    iterate = bool(modifier)
    if value == "*":
        # every reference of the matches (_include), every resource referring to them (_revinclude)
        return Include("*", None, None, iterate)
    parts = value.split(":")
    if len(parts) not in (2, 3) or not is_resource_type(parts[0]):
        raise Invalid(f"{name}={value!r} must look like Type:parameter[:TargetType] or *")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if target is not None and not is_resource_type(target):
        raise Invalid(f"{name}={value!r}: '{target}' is not a resource type")
    if code == "*":
        return Include(source, None, target, iterate)
    param = search_param(source, code)
    if param is None or param.type != "reference":
        raise Invalid(f"{name}={value!r}: {source} has no reference parameter '{code}'")
    return Include(source, code, target, iterate)


def element_names(value: str) -> list[str]:
    """The element names of an `_elements` value (`name,birthDate`). Raises Invalid when it names none
    (`_elements=` answered the whole resource, untagged)."""
    names = [e.strip() for e in value.split(",") if e.strip()]
    if not names:
        raise Invalid(f"_elements={value!r} names no element (e.g. _elements=name,birthDate)")
    for name in names:
        if not _ELEMENT_NAME.fullmatch(name):
            # a path such as identifier.value was dropped without a word: R4 takes base element names only
            raise Invalid(f"_elements={value!r}: '{name}' is not an element name; _elements lists elements at the "
                          "root of the resource (R4 search.html#elements), e.g. _elements=identifier,name")
    return names


# An element name at the root of a resource (R4 elementdefinition.html#path: letters and digits), a choice
# element written with its [x] too.
_ELEMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(\[x\])?", re.ASCII)


def query_pairs(query: str, where: str = "The criteria") -> list[tuple[str, str]]:
    """The (name, value) pairs of a query string (`a=1&b=%C3%A9`, a leading `?` allowed), decoded as
    UTF-8 (R4 http.html: URLs are UTF-8). Raises Invalid, naming `where`, for a %-escaped sequence that
    names no character: decoded with replacement characters, it would be searched as something never
    sent (a conditional create would then create a duplicate)."""
    try:
        return parse_qsl(query.lstrip("?"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise Invalid(f"{where} '{query}' is not UTF-8: a %-escaped byte sequence names no character") from None


def encode_cursor(values: list[Any]) -> str:
    """The `_cursor` (or `_before`) of paging links: a resource's sort values (see
    ResourceStore.sort_values) as base64url JSON."""
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(value: str, name: str = "_cursor") -> list[Any]:
    """The sort values a `_cursor` (or `_before`: `name`) holds. Raises Invalid, naming `name`, for
    anything `encode_cursor` did not make."""
    try:
        values = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, UnicodeDecodeError):
        values = None
    if not isinstance(values, list) or not values or \
            not all(v is None or isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
        raise Invalid(f"{name}={value!r} is not a paging cursor of this server (follow the paging links as given)")
    return values


# Result parameters that take one value: a second one would silently override the first (R4 3.1.1.5 gives
# each one value; `_sort` and `_elements` take their lists comma-separated).
_ONCE = frozenset({"_count", "_offset", "_cursor", "_before", "_sort", "_summary", "_elements", "_total"})


def _result_param(parsed: ParsedSearch, types: list[str], name: str, value: str) -> bool:
    """Apply one result parameter; False when it is not one (or is only ours, like _offset)."""
    base = name.partition(":")[0]
    if base == "_count":
        parsed.count = whole_param("_count", value, 0, MAX_COUNT)
    elif base == "_offset":
        parsed.offset = whole_param("_offset", value, 0)
    elif base == "_cursor":
        parsed.after = decode_cursor(value)
    elif base == "_before":
        parsed.before = decode_cursor(value, "_before")
    elif base == "_sort":
        parsed.sort = _sort_keys(types, value)
    elif base == "_summary":
        parsed.summary = None if summary_mode(value) == "false" else value
    elif base == "_elements":
        parsed.elements = element_names(value)
    elif base == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise Invalid(f"_total={value!r} is not one of none, estimate, accurate")
        parsed.total = value
    elif base == "_include":
        parsed.includes.append(_include(name, value, reverse=False))
    elif base == "_revinclude":
        parsed.revincludes.append(_include(name, value, reverse=True))
    else:
        return base in ("_format", "_pretty")
    return True


def _includes_of_nothing(parsed: ParsedSearch, types: list[str]) -> Iterator[str]:
    """What is wrong with each `_include` / `_revinclude` (not `:iterate`) that can include nothing from
    the matches of a search on `types` (R4 3.1.1.5.5): an `_include` whose source is another type, a
    `_revinclude` whose parameter refers to none of the searched types."""
    for inc in [*parsed.includes, *parsed.revincludes]:
        # `Type:param:Target` where param never refers to a Target: nothing to follow, whatever the matches
        param = search_param(inc.source_type, inc.param) if inc.source_type != "*" and inc.param else None
        if inc.target_type is not None and param is not None and param.targets and \
                inc.target_type not in param.targets:
            yield (f"{inc.source_type}:{inc.param} refers to {', '.join(param.targets)}, never to "
                   f"{inc.target_type}, so {inc.source_type}:{inc.param}:{inc.target_type} includes nothing")
    for inc in parsed.includes:
        if not inc.iterate and inc.source_type != "*" and inc.source_type not in types:
            param = search_param(inc.source_type, inc.param) if inc.param else None
            reverse = param is not None and (not param.targets or bool(set(param.targets) & set(types)))
            yield (f"_include={inc.source_type}:{inc.param} follows references of {inc.source_type}, which this "
                   f"search ({', '.join(types)}) does not return, so it includes nothing"
                   + (f"; _revinclude={inc.source_type}:{inc.param} includes the {inc.source_type} resources "
                      "that refer to the matches" if reverse else ""))
    for inc in parsed.revincludes:
        if inc.iterate or inc.source_type == "*" or inc.param is None:
            continue
        param = search_param(inc.source_type, inc.param)
        reach = set(param.targets) if param is not None and param.targets else None
        if inc.target_type is not None:
            if reach is not None and inc.target_type not in reach:
                continue  # said above: the parameter never refers to that type
            reach = {inc.target_type}
        if reach is not None and not reach & set(types):
            yield (f"_revinclude={inc.source_type}:{inc.param} takes resources whose {inc.param} refers to "
                   f"{', '.join(sorted(reach))}, none of which this search ({', '.join(types)}) "
                   "returns, so it includes nothing")


def _word_params(clauses: list[Clause]) -> Iterator[str]:
    """The `_text` / `_content` parameters among `clauses`, however deeply nested (_filter, chains, _has)."""
    for c in clauses:
        if isinstance(c, ParamClause) and c.param in TEXT_PARAMS:
            yield c.param
        elif isinstance(c, AnyClause | AllClause):
            yield from _word_params(c.clauses)
        elif isinstance(c, NotClause):
            yield from _word_params([c.clause])
        elif isinstance(c, ChainClause | HasClause):
            yield from _word_params(c.criteria.clauses)


def parse_search(types: list[str], params: list[tuple[str, str]], base_url: str, strict: bool,
                 text_search: bool = True, codes_validated: bool = True) -> ParsedSearch:
    """All query parameters of a search on `types` (one type, or several for a system search).
    Raises Invalid (400) for a malformed value, an unsupported modifier, `_text` or `_content` when
    `text_search` is off (the server keeps no word index: SEARCH_TEXT_INDEX), a code outside its required
    value set unless `codes_validated` is off (the server stores resources unvalidated: VALIDATION_ENABLED
    false, so that such a code may be stored and is searched as written), or - when `strict` - an unknown
    parameter; otherwise unknown parameters land in `ignored`."""
    judged = _CODES_JUDGED.set(codes_validated)
    try:
        return _parse_search(types, params, base_url, strict, text_search)
    finally:
        _CODES_JUDGED.reset(judged)


def _parse_search(types: list[str], params: list[tuple[str, str]], base_url: str, strict: bool,
                  text_search: bool) -> ParsedSearch:
    if len(params) > MAX_PARAMS:
        raise Invalid(f"A search takes at most {MAX_PARAMS} parameters, not {len(params)}")
    parsed = ParsedSearch(Criteria(list(types)))
    given: set[str] = set()
    for name, value in params:
        if name == "_type":
            continue  # decided by the caller (system search)
        base = name.partition(":")[0]
        if base in _ONCE:
            if base in given:
                raise Invalid(f"{base} is given more than once; give it once (several sort keys or elements go in "
                              "one comma-separated value)")
            given.add(base)
        if _result_param(parsed, types, name, value):
            if name not in ("_offset", "_cursor", "_before", "_format", "_pretty"):
                parsed.echo.append((name, value))
            continue
        try:
            parsed.criteria.clauses.append(parse_criterion(types, name, value, base_url))
        except Invalid as exc:
            if name in exc.message:
                raise
            # a chain, `_has` or `_filter` names the inner parameter: the client sees the one it sent too
            raise Invalid(f"{exc.message} (in the search parameter {name}={value!r})", code=exc.code,
                          expression=exc.expression, issues=exc.issues) from None
        except UnknownParameter:
            if strict:
                raise Invalid(f"Search parameter '{name}' is not supported for {', '.join(types)}") from None
            parsed.ignored.append(name)
            continue
        parsed.echo.append((name, value))
    if parsed.after is not None and parsed.before is not None:
        raise Invalid("_before and _cursor page in opposite directions; give one of them (follow the paging "
                      "links as given)")
    for note in _includes_of_nothing(parsed, types):
        if strict:
            raise Invalid(note)
        parsed.warnings.append(note)
    if not text_search:
        used = sorted(set(_word_params(parsed.criteria.clauses)))
        if used:
            raise Invalid(f"This server has text search off: {' and '.join(used)} cannot be searched "
                          "(it keeps no word index; SEARCH_TEXT_INDEX=false)")
    return parsed
