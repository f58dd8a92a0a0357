"""The search index rows of a resource: every R4 SearchParameter's values, extracted with FHIRPath.

Each parameter's expression is compiled once (fhirpathpy, R4 model) and cached. Values become typed
rows, one kind per parameter type (FHIR R4 3.1.1.4), so that SQL can filter, sort and page:

- string: (param, normalized, exact): normalized is case-folded with accents removed, for the default
  starts-with and `:contains`; exact is kept for `:exact`.
- token: (param, system, code). Derived rows make modifiers plain lookups: `param:text` string rows
  hold CodeableConcept.text / Coding.display / Identifier.type.text; `param:of-type` token rows hold
  an Identifier's type system and `typecode|value`.
- reference: (param, target): `Type/id` for references on this server, else the reference text;
  `param:identifier` token rows hold Reference.identifier.
- date: (param, low, high) in microseconds, [low, high) by the value's precision; open Period ends are
  MIN_US/MAX_US.
- number and quantity: (param, [system, code,] low, high); a point value has low == high.
- uri: (param, value).
- `_text` and `_content`: string rows (param, word, ""), one per distinct normalized word of the
  narrative (`text.div` without its markup) or of every string in the resource (base64 `data` left
  out), so that a word search is an indexed prefix lookup.
- Location `near`: number rows `near:latitude` and the position's unit vector `near:x|y|z` (see
  store/search_sql.py: NearClause).
- composite: (param, system1, value1, system2, value2, low2, high2) per element and pair of component
  values for two-component composites (all but four of R4's); composites of three or more components
  (MolecularSequence's coordinates) keep one row per component value, (param, element, part, system,
  value, low, high), numbered by element so that a search matches every part within one element.
"""

from __future__ import annotations

import copy
import html
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache, lru_cache
from importlib import resources
from itertools import product
from typing import Any

from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from fhirvault.fhir.dates import MAX_US, MIN_US, date_range
from fhirvault.fhir.indexing import COMPARTMENT, compartments
from fhirvault.fhir.references import parse_reference
from fhirvault.fhir.search_params import ROW_PARAMS, Component, SearchParam, params_of
from fhirvault.fhir.search_storage import stored_as
from fhirvault.fhir.validation import required_codes

R4_MODEL = models["r4"]
SECURITY_CONTEXT = "_securityContext"  # a Binary's securityContext, for access rules inside queries
STRING_MAX = 255  # normalized strings are indexed; longer values keep their full text in `exact`
# A securityContext reference as access rows keep it (store/version_access.py); other values are kept whole
# here and fitted to their index column where they are written (store/search_tables.py `fitted`).
TOKEN_MAX = 512
_RESOLVE_IS = re.compile(r"resolve\(\) is ([A-Za-z]+)")


@lru_cache(maxsize=16384)  # names, cities, code texts: the same few strings on most writes
def normalize(text: str) -> str:
    """Case-folded text with accents removed (`Ève` -> `eve`), for FHIR's default string matching."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


@dataclass
class IndexRows:
    """All index rows of one resource, as tuples ready for the store (see the module docstring)."""

    strings: set[tuple[str, str, str]] = field(default_factory=set)
    tokens: set[tuple[str, str | None, str]] = field(default_factory=set)
    refs: set[tuple[str, str]] = field(default_factory=set)
    dates: set[tuple[str, int, int]] = field(default_factory=set)
    numbers: set[tuple[str, float, float]] = field(default_factory=set)
    quantities: set[tuple[str, str | None, str | None, float, float]] = field(default_factory=set)
    uris: set[tuple[str, str]] = field(default_factory=set)
    composites: set[tuple[str, str | None, str | None, str | None, str | None, float | None, float | None]] = \
        field(default_factory=set)
    composite_parts: set[tuple[str, int, int, str | None, str | None, float | None, float | None]] = \
        field(default_factory=set)


def fhirpath_of(expression: str) -> str:
    """The expression as fhirpathpy can run it: `resolve() is T` (no resolution at index time) becomes a
    test of the reference's text, which names the type for every reference this server can resolve."""
    return _RESOLVE_IS.sub(lambda m: f"(reference.startsWith('{m.group(1)}/') or "
                                     f"reference.contains('/{m.group(1)}/'))", expression)


@cache
def _compiled(expression: str) -> Callable[..., list[Any]]:
    fn: Callable[..., list[Any]] = fhirpath_compile(fhirpath_of(expression), R4_MODEL)
    return fn


# The shapes that make up all but three of R4's expressions, read straight from the JSON: a dotted path
# whose steps may be `as T` / `.as(T)` (choice type), `.where(k='v')`, `.where(resolve() is T)`, and
# `(path as T).more.steps`. tests/test_search_fast_path.py proves the walk equal to fhirpathpy.
_STEP = re.compile(r"\.(?:as\((?P<as_fn>[a-zA-Z]+)\)|where\((?P<key>[a-z]+)='(?P<val>[^']*)'\)"
                   r"|where\(resolve\(\) is (?P<rtype>[A-Za-z]+)\)|(?P<name>[a-zA-Z]+)(?![(\w]))")
_PART = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)(?P<steps>(?:\.[a-zA-Z]+|\.as\(\w+\)|\.where\([^()]*\)"
                   r"|\.where\(resolve\(\) is \w+\))*)(?:\s+as\s+(?P<as>[a-zA-Z]+))?$")
_WRAPPED = re.compile(r"^\((?P<inner>[^()]+)\)(?P<rest>(?:\.[a-zA-Z]+)*)$")  # (Type.x as T).y.z
Step = tuple[str, str, str]  # (kind, a, b): ("name", n, ""), ("as", T, ""), ("where", k, v), ("is", T, "")


def _steps(text: str) -> list[Step] | None:
    out: list[Step] = []
    pos = 0
    while pos < len(text):
        m = _STEP.match(text, pos)
        if not m:
            return None
        if m.group("name"):
            out.append(("name", m.group("name"), ""))
        elif m.group("as_fn"):
            out.append(("as", m.group("as_fn"), ""))
        elif m.group("key"):
            out.append(("where", m.group("key"), m.group("val")))
        else:
            out.append(("is", m.group("rtype"), ""))
        pos = m.end()
    return out


def _part_plan(part: str) -> list[Step] | None:
    if re.fullmatch(r"[A-Z][A-Za-z]+", part):
        return [("self", part, "")]  # the resource itself (`Observation | Observation.component`)
    rest: list[Step] = []
    wrapped = _WRAPPED.match(part)
    if wrapped:
        part = wrapped.group("inner").strip()
        rest = [("name", name, "") for name in wrapped.group("rest").split(".") if name]
    m = _PART.match(part)
    steps = _steps(m.group("steps")) if m else None
    if m is None or steps is None:
        return None
    plan = steps + ([("as", m.group("as"), "")] if m.group("as") else []) + rest
    if not plan or plan[0][0] != "name":
        return None
    return _typed(m.group("type"), plan)


def _is_a(choice_type: str, wanted: str) -> bool:
    """Whether a choice element's type (`Canonical`, as the model spells it in choice paths) is the
    FHIRPath type `wanted` (`uri`, `Quantity`) or one derived from it (R4 model type2Parent)."""
    parents = R4_MODEL["type2Parent"]
    wanted = wanted.lower()
    t: str | None = choice_type if choice_type in parents else choice_type[0].lower() + choice_type[1:]
    while t is not None:
        if t.lower() == wanted:
            return True
        t = parents.get(t)
    return False


def _is_backbone(path: str) -> bool:
    prefix = path + "."
    return any(p.startswith(prefix) for p in R4_MODEL["path2Type"])


def _typed(rtype: str, plan: list[Step]) -> list[Step] | None:
    """`plan` with each name step marked, from the R4 model, as a choice element (b: its type suffixes,
    `|`-joined) or a plain one (b: ""), so that `value` reads valueQuantity but `version` never reads
    versionNeeded. None when the model does not know a step's type (fhirpathpy then reads the path)."""
    path2type, choices = R4_MODEL["path2Type"], R4_MODEL["choiceTypePaths"]
    elsewhere = R4_MODEL["pathsDefinedElsewhere"]
    current: str | None = rtype
    out: list[Step] = []
    for i, (kind, a, b) in enumerate(plan):
        if kind != "name":
            if kind == "as" and (not out or out[-1][0] != "name" or not out[-1][2]):
                return None  # `as` on a plain element: a type test the walk does not make
            if kind == "as":
                # FHIRPath `as` keeps subtypes too: `as uri` reads sourceCanonical, `as Quantity` valueAge
                _, element, suffixes = out[-1]
                kept = [t for t in suffixes.split("|") if _is_a(t, a)]
                out[-1] = ("name", element, "|".join(kept) or "-")  # "-": no key can match
                current = a[0].upper() + a[1:]
            out.append((kind, a, b))
            continue
        if current is None:
            return None
        path = f"{current}.{a}"
        path = elsewhere.get(path, path)
        if path in choices:
            out.append(("name", a, "|".join(choices[path])))
            following = plan[i + 1] if i + 1 < len(plan) else None
            current = None if following is None or following[0] != "as" else current
        elif path in path2type:
            out.append(("name", a, ""))
            current = path2type[path]
        elif _is_backbone(path):
            out.append(("name", a, ""))
            current = path
        else:
            return None
    return out


@cache
def _fast_plan(expression: str) -> list[list[Step]] | None:
    """Step lists for each `|` part, or None when some part needs the full FHIRPath engine."""
    plans = []
    for part in expression.split("|"):
        plan = _part_plan(part.strip())
        if plan is None:
            return None
        plans.append(plan)
    return plans


# -- the element types an expression reaches ---------------------------------------------------------
# FHIR primitive type names (`boolean`, `code`, ...): choice suffixes spell them capitalized (`Boolean`).
_PRIMITIVES = frozenset(t for t in R4_MODEL["type2Parent"] if t[0].islower())
# FHIRPath operators whose result is always a Boolean (FHIRPath 6.5 "Boolean logic").
_BOOLEAN_OPERATOR = re.compile(r"\s(?:and|or|xor|implies)\s")


def _fhir_type(name: str) -> str:
    """`Boolean` (a choice suffix) -> `boolean`; `System.String` -> `string`; complex types unchanged."""
    name = name.removeprefix("System.")
    low = name[0].lower() + name[1:]
    return low if low in _PRIMITIVES else name


def _top_level(expression: str) -> str:
    """`expression` with parenthesized and quoted text blanked, so that only its top-level operators remain."""
    out, depth, quoted = [], 0, False
    for ch in expression:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        out.append(ch if depth == 0 and not quoted and ch not in "()'" else " ")
    return "".join(out)


def _part_reach(part: str) -> tuple[frozenset[str], str | None] | None:
    """(types, element path) of the values one `|` part selects: the path (`Patient.gender`, `Address.use`)
    when a plain element ends the walk, None after a choice element. None when the walk cannot plan it."""
    plan = _part_plan(part)
    if plan is None:
        return None
    if plan[0][0] == "self":
        return frozenset({plan[0][1]}), None
    found = re.match(r"\(?\s*([A-Z][A-Za-z]+)", part)
    assert found is not None  # _part_plan only plans parts that start with a type
    path2type, elsewhere = R4_MODEL["path2Type"], R4_MODEL["pathsDefinedElsewhere"]
    current: str | None = found.group(1)
    reached: frozenset[str] = frozenset()
    element: str | None = None
    for kind, a, b in plan:  # typed by _typed: each name is a known element, b its choice suffixes
        if kind == "name" and b:
            reached = frozenset(_fhir_type(t) for t in b.split("|") if t != "-")
            current = element = None
        elif kind == "name":
            element = path = elsewhere.get(f"{current}.{a}", f"{current}.{a}")
            mapped = path2type.get(path)
            current = path if mapped in (None, "BackboneElement") else mapped
            reached = frozenset({"BackboneElement" if current == path else _fhir_type(mapped)})
        elif kind == "as":
            current = a[0].upper() + a[1:]
    return reached, element


@cache
def value_types(expression: str) -> frozenset[str] | None:
    """The FHIR types of the values a SearchParameter's FHIRPath `expression` (each `|` part starting at a
    resource type, as params_of gives them) selects, from the R4 model the index walks with:
    `Patient.active` -> {boolean}, `Observation.value.as(CodeableConcept) | Group.characteristic.value`
    -> {CodeableConcept, Quantity, boolean, ...}; choice suffixes as primitive names (`boolean`), else
    the complex type (`Identifier`). An expression whose top-level operator is `and`, `or`, `xor` or
    `implies` gives {boolean} (Patient `deceased`). None when some part is beyond the model walk (the
    caller then assumes nothing)."""
    if _BOOLEAN_OPERATOR.search(_top_level(expression)):
        return frozenset({"boolean"})
    out: set[str] = set()
    for part in expression.split("|"):
        reached = _part_reach(part.strip())
        if reached is None:
            return None
        out |= reached[0]
    return frozenset(out)


@cache
def _code_system_table() -> dict[str, list[str]]:
    text = resources.files("fhirvault.fhir").joinpath("data/r4_code_systems.json").read_text()
    table: dict[str, list[str]] = json.loads(text)["systems"]
    return table


@cache
def code_systems(expression: str) -> frozenset[str] | None:
    """The code systems of the `code` elements `expression` selects, implied by their required bindings
    (R4 datatypes.html#code; table generated by scripts/gen_code_systems.py): `Patient.gender` ->
    {http://hl7.org/fhir/administrative-gender}. None unless every value is such a `code`."""
    if value_types(expression) != frozenset({"code"}):
        return None
    table = _code_system_table()
    out: set[str] = set()
    for part in expression.split("|"):
        reached = _part_reach(part.strip())
        systems = table.get(reached[1]) if reached is not None and reached[1] is not None else None
        if not systems:
            return None
        out.update(systems)
    return frozenset(out)


@cache
def code_values(expression: str) -> frozenset[str] | None:
    """The codes the `code` elements `expression` selects may hold under their required bindings, as
    validation accepts them (validation.required_codes): `Patient.gender` -> {male, female, other, unknown}.
    None unless every value is such a `code` with an enumerated value set."""
    if value_types(expression) != frozenset({"code"}):
        return None
    out: set[str] = set()
    for part in expression.split("|"):
        reached = _part_reach(part.strip())
        codes = required_codes(reached[1]) if reached is not None and reached[1] is not None else None
        if codes is None:
            return None
        out.update(codes)
    return frozenset(out)


def _run(nodes: list[Any], steps: list[Step]) -> list[Any]:
    for kind, a, b in steps:
        if kind == "name":
            keys = [a + t for t in b.split("|")] if b else [a]  # a choice element: `a` + one of its types
            nxt: list[Any] = []
            for node in nodes:
                if not isinstance(node, dict):
                    continue
                for key in keys:
                    v = node.get(key)
                    if v is not None:
                        nxt.extend(v if isinstance(v, list) else [v])
            nodes = nxt
        elif kind == "where":
            nodes = [n for n in nodes if isinstance(n, dict) and n.get(a) == b]
        elif kind == "is":
            nodes = [n for n in nodes if isinstance(n, dict) and isinstance(n.get("reference"), str)
                     and (n["reference"].startswith(a + "/") or f"/{a}/" in n["reference"])]
    return nodes


@cache
def _stems(expression: str) -> frozenset[str]:
    """Top-level elements an expression reads (`Patient.deceased.exists()` -> deceased); see _reads_whole
    for expressions that name the resource itself."""
    return frozenset(re.findall(r"\b[A-Z][A-Za-z]+\.([a-zA-Z]+)", expression))


def present_stems(resource: dict[str, Any]) -> frozenset[str]:
    """The names under which `resource`'s top-level elements can be read: each key, and for a key that may
    be a choice element (`valueQuantity`, `effectiveDateTime`) its stem (`value`, `effective`) too."""
    out = set(resource)
    for key in resource:
        out.update(_key_stems(key))
    return frozenset(out)


@lru_cache(maxsize=8192)  # element names: a bounded vocabulary in practice, bounded here in any case
def _key_stems(key: str) -> tuple[str, ...]:
    """Every prefix of `key` that ends before a capital: `onsetDateTime` -> onset, onsetDate."""
    return tuple(key[:cut] for cut in range(1, len(key)) if key[cut].isupper())


@cache
def _reads_whole(expression: str, rtype: Any) -> bool:
    """Whether `expression` names the resource itself (`Observation | Observation.component`), not only
    elements under it."""
    return isinstance(rtype, str) and re.search(rf"\b{re.escape(rtype)}\b(?!\.)", expression) is not None


def evaluate(param: SearchParam, resource: dict[str, Any]) -> list[Any]:
    """The values `param`'s expression selects in `resource` (plain JSON values)."""
    return evaluate_expression(param.expr, resource)


def evaluate_expression(expression: str, resource: dict[str, Any], present: frozenset[str] | None = None) -> list[Any]:
    """`expression` (a SearchParameter's FHIRPath) on `resource`: simple paths are walked directly,
    anything else runs through fhirpathpy, compiled once. `present`: present_stems(resource), when the
    caller has it already."""
    if expression == resource.get("resourceType"):
        return [resource]  # composites over the whole resource (Observation code-value-quantity)
    if present is None:
        present = present_stems(resource)
    plans = _fast_plan(expression)
    if plans is None:
        # Never skipped: such an expression may have values when its elements are absent (`deceased`
        # gives false). fhirpathpy annotates what it reads (decimals become Decimal): it gets a copy of
        # the elements the expression names, which are all it can read from the resource.
        read = resource if _reads_whole(expression, resource.get("resourceType")) else {
            k: v for k, v in resource.items()
            if k == "resourceType" or k in _stems(expression) or not _stems(expression).isdisjoint(_key_stems(k))}
        return list(_compiled(expression)(copy.deepcopy(read)))
    out: list[Any] = []
    for steps in plans:
        if steps[0][0] == "self":
            if steps[0][1] == resource.get("resourceType"):
                out.append(resource)
        elif steps[0][1] in present:
            out.extend(_run([resource], steps))
    return _distinct(out) if len(plans) > 1 and len(out) > 1 else out


def _distinct(values: list[Any]) -> list[Any]:
    """`values` without repeats, in order: FHIRPath's `|` is a union, distinct over its whole result
    (FHIRPath 6.5.1)."""
    seen: set[str] = set()
    out = []
    for v in values:
        key = json.dumps(v, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


# -- values to typed keys ------------------------------------------------------------------------------
def string_values(value: Any) -> Iterator[str]:
    """The strings of a string-type value: a string, or the string parts of HumanName/Address."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in ("extension", "id", "use", "period"):
                continue
            for v in item if isinstance(item, list) else [item]:
                if isinstance(v, str):
                    yield v


def token_values(value: Any) -> Iterator[tuple[str | None, str, str | None]]:
    """(system, code, text) of a token-type value: code, boolean, string, uri, Coding, CodeableConcept,
    Identifier, ContactPoint."""
    if isinstance(value, bool):
        yield None, "true" if value else "false", None
    elif isinstance(value, str | int | Decimal):
        yield None, str(value), None
    elif isinstance(value, dict):
        if "coding" in value or ("text" in value and "code" not in value and "value" not in value):
            for coding in value.get("coding") or []:
                if isinstance(coding, dict):
                    yield from token_values(coding)
            if isinstance(value.get("text"), str):
                yield None, "", value["text"]
        elif "code" in value or "display" in value:
            code = value.get("code")
            yield value.get("system"), code if isinstance(code, str) else "", value.get("display")
        elif "value" in value:
            yield value.get("system"), str(value["value"]), None


def quantity_values(value: Any) -> Iterator[tuple[str | None, str | None, float, float]]:
    """(system, code, low, high) of a Quantity, Money, Range or number."""
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        yield None, None, float(value), float(value)
    elif isinstance(value, dict):
        if "low" in value or "high" in value:
            low, high = value.get("low") or {}, value.get("high") or {}
            lo = float(low["value"]) if "value" in low else float("-inf")
            hi = float(high["value"]) if "value" in high else float("inf")
            ref = low if "value" in low else high
            yield ref.get("system"), ref.get("code") or ref.get("unit"), lo, hi
        elif "value" in value:
            v = float(value["value"])
            if "currency" in value:
                yield "urn:iso:std:iso:4217", value["currency"], v, v
            else:
                yield value.get("system"), value.get("code") or value.get("unit"), v, v


def date_values(value: Any) -> Iterator[tuple[int, int]]:
    """[low, high) microsecond ranges of a date, dateTime, instant, Period or Timing."""
    if isinstance(value, str):
        try:
            yield date_range(value)
        except ValueError:
            return
    elif isinstance(value, dict):
        if "start" in value or "end" in value:
            low = next(date_values(value["start"]), (MIN_US, MIN_US))[0] if "start" in value else MIN_US
            high = next(date_values(value["end"]), (MAX_US, MAX_US))[1] if "end" in value else MAX_US
            yield low, high
        for event in value.get("event") or []:
            yield from date_values(event)
        bounds = (value.get("repeat") or {}).get("boundsPeriod")
        if bounds:
            yield from date_values(bounds)


def reference_values(value: Any, base_url: str) -> Iterator[tuple[str | None, tuple[str | None, str] | None]]:
    """(target, identifier) of a Reference, canonical or uri value."""
    if isinstance(value, str):
        yield value.split("|", 1)[0], None
    elif isinstance(value, dict):
        ref = value.get("reference")
        target = None
        if isinstance(ref, str):
            parsed = parse_reference(ref, base_url)
            target = parsed.relative if parsed else ref
        ident = value.get("identifier")
        key = (ident.get("system"), str(ident["value"])) if isinstance(ident, dict) and "value" in ident else None
        if target or key:
            yield target, key


# -- one parameter into rows -----------------------------------------------------------------------
def _add(rows: IndexRows, param: SearchParam, values: Iterable[Any], base_url: str,
         identifiers_only: bool = False) -> None:
    code, kind = param.code, param.type
    for value in values:
        if kind == "string":
            for s in string_values(value):
                rows.strings.add((code, normalize(s)[:STRING_MAX], s))
        elif kind == "token":
            _add_tokens(rows, code, value)
        elif kind == "reference":
            for target, ident in reference_values(value, base_url):
                if target and not identifiers_only:
                    rows.refs.add((code, target))
                if ident:
                    rows.tokens.add((f"{code}:identifier", ident[0], ident[1]))
        elif kind == "date":
            for day_low, day_high in date_values(value):
                rows.dates.add((code, day_low, day_high))
        elif kind == "number":
            for _s, _c, low, high in quantity_values(value):
                rows.numbers.add((code, low, high))
        elif kind == "quantity":
            for system, unit, q_low, q_high in quantity_values(value):
                rows.quantities.add((code, system, unit, q_low, q_high))
        elif kind == "uri" and isinstance(value, str):
            rows.uris.add((code, value))


def _add_tokens(rows: IndexRows, code: str, value: Any) -> None:
    for system, token, text in token_values(value):
        if token:
            rows.tokens.add((code, system, token))
        if text:
            rows.strings.add((f"{code}:text", normalize(text)[:STRING_MAX], text))
    if isinstance(value, dict) and "value" in value and isinstance(value.get("type"), dict):
        kind = value["type"]
        for coding in kind.get("coding") or []:
            if isinstance(coding, dict) and coding.get("code"):
                rows.tokens.add((f"{code}:of-type", coding.get("system"),
                                 f"{coding['code']}|{value['value']}"))
        if isinstance(kind.get("text"), str):
            rows.strings.add((f"{code}:text", normalize(kind["text"])[:STRING_MAX], kind["text"]))


def composite_keys(kind: str, value: Any, base_url: str) -> list[tuple[str | None, str | None, float | None,
                                                                         float | None]]:
    """(system, value, low, high) keys of one composite component value, by the component's type."""
    if kind == "token":
        return [(s, c, None, None) for s, c, _t in token_values(value) if c]
    if kind == "reference":
        return [(None, t, None, None) for t, _i in reference_values(value, base_url) if t]
    if kind == "string":
        return [(None, normalize(s)[:STRING_MAX], None, None) for s in string_values(value)]
    if kind in ("quantity", "number"):
        return [(s, c, lo, hi) for s, c, lo, hi in quantity_values(value)]
    if kind == "date":
        return [(None, None, float(lo), float(hi)) for lo, hi in date_values(value)]
    return []


def _element_type(base_expr: str) -> str | None:
    """The type path fhirpathpy needs to read choice elements inside a composite's element."""
    path = base_expr.strip()
    if "|" in path or "(" in path:
        return None
    mapped: str | None = R4_MODEL["path2Type"].get(path)
    return path if mapped in (None, "BackboneElement") else mapped


@cache
def _element_types(base_expr: str) -> tuple[str | None, str | None]:
    """(type path of the resource itself, type path of other elements) of a composite whose expression
    is a union of the resource and one path (`Observation | Observation.component`); otherwise both are
    _element_type's answer."""
    parts = [p.strip() for p in base_expr.split("|")]
    if len(parts) == 2 and re.fullmatch(r"[A-Z][A-Za-z]+", parts[0]):
        return parts[0], _element_type(parts[1])
    return _element_type(base_expr), _element_type(base_expr)


def component_expression(param: SearchParam, component: Component) -> str | None:
    """One component of the composite `param` as an expression from its resource type, for value_types and
    code_systems: its expression read from the composite's element(s) (`Observation |
    Observation.component` reads `code` from both), or from the resource for a `%resource.` component.
    None when the element's type path is not known."""
    if component.expr.startswith("%resource."):
        return f"{param.expr.split('.')[0].strip()}.{component.expr.removeprefix('%resource.')}"
    paths = set(_element_types(param.expr))
    if None in paths:
        return None
    return " | ".join(f"{path}.{part.strip()}" for path in sorted(p for p in paths if p)
                      for part in component.expr.split("|"))


@cache
def _relative_plan(type_path: str, expression: str) -> list[list[Step]] | None:
    """Step lists of `expression` read from an element whose type path is `type_path`
    (`Observation.component`): planned from the full path, then without the steps to the element."""
    plans = _fast_plan(" | ".join(f"{type_path}.{p.strip()}" for p in expression.split("|")))
    skip = type_path.count(".")
    return None if plans is None else [plan[skip:] for plan in plans]


def _component_values(expression: str, element: Any, type_path: str | None, resource: dict[str, Any]
                      ) -> list[Any]:
    if expression.startswith("%resource."):
        # a component read from the resource rather than the element (MolecularSequence's chromosome)
        return evaluate_expression(f"{resource['resourceType']}.{expression.removeprefix('%resource.')}", resource)
    plans = _relative_plan(type_path, expression) if type_path and isinstance(element, dict) else None
    if plans is not None:
        out = [v for steps in plans for v in _run([element], steps)]
        return _distinct(out) if len(plans) > 1 and len(out) > 1 else out
    element = copy.deepcopy(element)  # fhirpathpy annotates what it reads
    node = ResourceNode.create_node(element, type_path) if type_path and isinstance(element, dict) else element
    return list(_compiled(expression)(node))


def _add_composite(rows: IndexRows, param: SearchParam, resource: dict[str, Any], base_url: str) -> None:
    own_type, type_path = _element_types(param.expr)
    for number, found in enumerate(evaluate(param, resource)):
        element_type = own_type if found is resource else type_path
        keys = []
        for comp in param.components:
            values = _component_values(comp.expr, found, element_type, resource)
            keys.append([k for v in values for k in composite_keys(comp.type, v, base_url)])
        if len(keys) == 2:
            for (s1, v1, _l, _h), (s2, v2, lo2, hi2) in product(*keys):
                rows.composites.add((param.code, s1, v1, s2, v2, lo2, hi2))
            continue
        for part, part_keys in enumerate(keys):
            for system, value, low, high in part_keys:
                rows.composite_parts.add((param.code, number, part, system, value, low, high))


_TAG = re.compile(r"<[^>]*>")
_WORD = re.compile(r"\w+")
TEXT_PARAMS = ("_text", "_content")


def words(text: str) -> set[str]:
    """The distinct words of `text`, normalized (`Ève,  EVE-2` -> {eve, 2})."""
    return {w[:STRING_MAX] for w in _WORD.findall(normalize(text))}


def narrative_text(resource: dict[str, Any]) -> str:
    """The narrative's text (`text.div` without markup, entities decoded); empty when there is none."""
    text = resource.get("text")
    div = text.get("div") if isinstance(text, dict) else None
    return html.unescape(_TAG.sub(" ", div)) if isinstance(div, str) else ""


# Elements whose strings are identifiers, addresses or bookkeeping rather than text a person searches for:
# leaving them out of `_content` keeps its index a third of the size it would be (systems and urls alone
# give most of the words of coded data).
_DATE = re.compile(r"^\d{4}(-\d\d(-\d\d(T[\d:.]+(Z|[+-]\d\d:\d\d)?)?)?)?$")  # dates, times: no words
_NOT_TEXT = frozenset({"data", "id", "system", "url", "reference", "resourceType", "meta", "profile",
                       "valueSet", "contentType", "language"})


def _strings(value: Any, key: str = "") -> Iterator[str]:
    if isinstance(value, str):
        if key == "div":
            yield html.unescape(_TAG.sub(" ", value))
        elif key not in _NOT_TEXT and not _DATE.match(value):
            yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in _NOT_TEXT:
                yield from _strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)


def content_words(resource: dict[str, Any]) -> set[str]:
    """The words of the text of `resource` (`_content`, R4 search.html#content): every string but those of
    ids, systems, urls, references, meta, content types, languages and base64 data (_NOT_TEXT), and
    dates (searched by the date parameters)."""
    out: set[str] = set()
    for text in _strings(resource):
        out |= words(text)
    return out


def _add_position(rows: IndexRows, resource: dict[str, Any]) -> None:
    position = resource.get("position")
    if not isinstance(position, dict):
        return
    lat, lon = position.get("latitude"), position.get("longitude")
    if not isinstance(lat, int | float | Decimal) or not isinstance(lon, int | float | Decimal) \
            or isinstance(lat, bool) or isinstance(lon, bool):
        return
    phi, lam = math.radians(float(lat)), math.radians(float(lon))
    unit = (math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi))
    for param, v in zip(("near:latitude", "near:x", "near:y", "near:z"), (float(lat), *unit), strict=True):
        rows.numbers.add((param, v, v))


@cache
def _indexed_params(rtype: str) -> tuple[tuple[SearchParam, frozenset[str] | None, bool], ...]:
    """The parameters of `rtype` that have index rows of their own (fhir/search_storage.py), each with
    the top-level elements its expression reads (None: the expression reads the whole resource, as
    composites over `Observation` do) and whether only its `:identifier` rows are its own."""
    out = []
    for p in params_of(rtype).values():
        if p.code in ROW_PARAMS:
            continue
        stored = stored_as(rtype, p.code)
        stems = None if _reads_whole(p.expr, rtype) else _stems(p.expr) or None
        if stored.params == (p.code,):
            out.append((p, stems, False))
        elif p.type == "reference" and stored.target_type is not None:
            out.append((p, stems, True))
    return tuple(out)


def search_index(resource: dict[str, Any], base_url: str, text: bool = True) -> IndexRows:
    """Every index row of `resource` (a stored FHIR resource with its `resourceType`), including the
    Patient-compartment reference rows (`_compartment`) that access rules use; `text`: with the word rows
    of `_text` and `_content` (the server's SEARCH_TEXT_INDEX)."""
    rows = IndexRows()
    rtype = resource["resourceType"]
    present = present_stems(resource)
    for param, stems, identifiers_only in _indexed_params(rtype):
        if stems is not None and present.isdisjoint(stems) and _fast_plan(param.expr) is not None:
            continue  # nothing the path reads is in the resource
        if param.type == "composite":
            _add_composite(rows, param, resource, base_url)
        else:
            _add(rows, param, evaluate_expression(param.expr, resource, present), base_url, identifiers_only)
    if text:
        # word rows keep no `exact` copy: only prefix lookups read them
        rows.strings.update(("_text", w, "") for w in words(narrative_text(resource)))
        rows.strings.update(("_content", w, "") for w in content_words(resource))
    if rtype == "Location":
        _add_position(rows, resource)
    rows.refs.update(access_refs(resource, base_url))
    return rows


def access_refs(resource: dict[str, Any], base_url: str) -> set[tuple[str, str]]:
    """The (param, target) rows access rules read: the Patient compartments the resource lies in
    (`_compartment`) and a Binary's securityContext (`_securityContext`)."""
    out = {(COMPARTMENT, target) for target in compartments(resource, base_url)}
    if resource["resourceType"] == "Binary":
        for target, _ident in reference_values(resource.get("securityContext"), base_url):
            if target:
                out.add((SECURITY_CONTEXT, target[:TOKEN_MAX]))
    return out
