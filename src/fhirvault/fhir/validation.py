"""Validation of a resource against the R4 (4.0.1) base definitions, as a list of issues.

The rules come from the generated table `data/r4_validation.json` (see
scripts/gen_fhir_validation.py: the official R4 JSON schema and the StructureDefinitions). From it
one JSON schema (draft-07) is built and compiled once with `jsonschema-rs`, a Rust validator that
checks a 2 KiB resource in tens of microseconds and reports every error with its instance path.
The schema adds to the official one what the spec says but the official schema leaves out:
- choice types: at most one `value[x]` name present (R4 formats.html "Choice data types"),
  exactly one when the element is required;
- no empty objects, arrays or strings (R4 json.html: "no empty elements");
- `integer`, `unsignedInt`, `positiveInt` ranges (R4 datatypes.html), `base64Binary`'s regex;
- the shape of `Reference.reference` (R4 references.html: a literal reference is `Type/id`, an
  absolute URL, a `urn:uuid:`/`urn:oid:` or a `#` fragment);
- contained and Bundle entry resources validated against their own type;
- `null` inside a repeating primitive (kept as a placeholder when `_element` carries extensions).
Bundle's invariants (`bdl-*`) are FHIRPath expressions from the Bundle StructureDefinition, run
with fhirpathpy. The other invariants of the StructureDefinitions that test which elements are present
(ext-1, att-1, qty-3, pat-1, ...) are schema rules (fhir/invariants.py translates them), as is ele-1;
the contained-resource rules (ref-1, dom-2..5) and the narrative's (txt-1, txt-2) are checked in code.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models as fhirpath_models

from fhirvault import jsoncodec
from fhirvault.fhir.invariants import (
    ORDER_KEYWORDS,
    ORDER_RULES,
    contained_issues,
    element_rule,
    narrative_issues,
    presence_rule,
)

ID = "[A-Za-z0-9\\-.]{1,64}"


@dataclass(frozen=True)
class Issue:
    """One problem found: an OperationOutcome issue.

    `severity` is "error" or "warning"; `code` an R4 IssueType code (`structure`, `value`,
    `required`, `code-invalid`, `invariant`, `invalid`); `expression` the FHIRPath of the element
    (`Patient.name[0].given[1]`); `message` a sentence a person can act on.
    """

    severity: str
    code: str
    expression: str
    message: str

    def as_fhir(self) -> dict[str, Any]:
        """The issue as an `OperationOutcome.issue` element."""
        return {"severity": self.severity, "code": self.code, "diagnostics": self.message,
                "details": {"text": self.message}, "expression": [self.expression]}


@cache
def _table() -> dict[str, Any]:
    text = resources.files("fhirvault.fhir").joinpath("data/r4_validation.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def required_codes(path: str) -> frozenset[str] | None:
    """The codes a `code` element may hold under its required binding, as validation accepts them (R4
    terminologies.html#required): `Patient.gender` or `Patient.contact.gender` -> {male, female, other,
    unknown}; an element path as the R4 StructureDefinitions name it. None when the element has no such
    list (no required binding, a value set too large to enumerate, or a path the table does not know)."""
    table = _table()
    types, names = table["types"], path.split(".")
    current = names[0]
    for name in names[1:-1]:
        row = types.get(current, {}).get("elements", {}).get(name)
        if row is None:
            return None
        current = row[0]
    row = types.get(current, {}).get("elements", {}).get(names[-1]) if len(names) > 1 else None
    if row is None or len(row) < 3:
        return None
    return frozenset(table["enums"][row[2]])


# R4 datatypes.html: "Dates SHALL be valid dates" (for date, dateTime and instant), which the spec's
# regexes leave to the reader: no 30 or 31 February, no 31st of a 30-day month, 29 February only in leap
# years (divisible by 4, centuries only by 400). Lookaheads put in front of the type's own regex.
LEAP_YEAR = r"(?:\d\d(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
CALENDAR_DATE = rf"(?!\d{{4}}-(?:02-3[01]|0[469]-31|11-31))(?!(?!{LEAP_YEAR}-)\d{{4}}-02-29)"
CALENDAR_TYPES = ("date", "dateTime", "instant")


# R4 datatypes.html#string: "Strings SHALL NOT exceed 1MB (1024*1024 characters) in size".
STRING_MAX_CHARACTERS = 1024 * 1024


def _primitive_schema(name: str, p: dict[str, Any], nullable: bool) -> dict[str, Any]:
    json_type = p["json"]
    schema: dict[str, Any] = {"type": [json_type, "null"] if nullable else json_type}
    if "regex" in p:
        calendar = CALENDAR_DATE if name in CALENDAR_TYPES else ""
        schema["pattern"] = f"^{calendar}(?:{_ascii_spaces(p['regex'])})$"
    if json_type == "string":
        schema["minLength"] = 1
    if name == "string":
        schema["maxLength"] = STRING_MAX_CHARACTERS
    if "min" in p:
        schema["minimum"], schema["maximum"] = p["min"], p["max"]
    return schema


def _ascii_spaces(regex: str) -> str:
    r"""The FHIR regexes are XML Schema / Java regexes, where `\s` is ASCII white space only; in the
    Rust engine it is Unicode's, which would refuse a no-break space inside a string. Spelled out."""
    space, other = " \\t\\n\\r\\f\\x0B", "\\x0B\\f"
    return (regex.replace("[ \\r\\n\\t\\S]", f"[^{other}]").replace("[^\\s]", f"[^{space}]")
            .replace("\\S", f"[^{space}]").replace("\\s", f"[{space}]"))


def _reference_pattern() -> str:
    types = "|".join(_table()["resourceTypes"])
    return f"^(?:#.*|[A-Za-z][A-Za-z0-9+.\\-]*:\\S+|(?:{types})/{ID}(?:/_history/{ID})?)$"


def _element_schema(row: list[Any], prims: dict[str, Any], enums: list[list[str]]) -> dict[str, Any]:
    dtype, many = row[0], row[1]
    nullable = many and dtype in prims
    if len(row) > 2:
        item: dict[str, Any] = {"enum": enums[row[2]] + ([None] if nullable else [])}
    elif dtype in prims:
        item = {"$ref": f"#/definitions/{dtype}{'?' if nullable else ''}"}
    else:
        item = {"$ref": f"#/definitions/{dtype}"}
    return {"type": "array", "minItems": 1, "items": item} if many else item


def _choice_rules(choices: dict[str, list[str]], required: set[str]) -> list[dict[str, Any]]:
    rules = []
    for base, names in choices.items():
        branches: list[dict[str, Any]] = [{"required": [n]} for n in names]
        if base not in required:
            branches.append({"not": {"anyOf": [{"required": [n]} for n in names]}})
        rules.append({"oneOf": branches})
    return rules


INVARIANT = "inv:"  # the prefix of the schema definitions that hold an invariant (see _issues_of)


def _invariant_rules(name: str, spec: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    """`$ref`s to the definitions of the type's invariants (table `invariants`: constraints of the
    StructureDefinitions translated by fhir.invariants.presence_rule), and ele-1 on every element type
    (not on resources, which are no elements). Each invariant is a definition of its own, named
    `inv:Type:key`, so an error's schema path tells which one failed."""
    out = []
    choices = {base: names for base, names in spec.get("choices", {}).items()}
    for key, _human, expression in _table()["invariants"].get(name, []):
        ref = f"{INVARIANT}{name}:{key}"
        defs[ref] = ORDER_RULES[key] if key in ORDER_RULES else presence_rule(expression, choices)
        out.append({"$ref": f"#/definitions/{ref}"})
    if not spec.get("resource"):
        defs.setdefault(f"{INVARIANT}ele-1", element_rule())
        out.append({"$ref": f"#/definitions/{INVARIANT}ele-1"})
    return out


def _invariant_of(schema_path: list[Any]) -> tuple[str, str]:
    """(key, human text) of the invariant an error's schema path runs through; ("", "") when none."""
    for part in schema_path:
        if isinstance(part, str) and part.startswith(INVARIANT):
            name, _, key = part[len(INVARIANT):].rpartition(":")
            if key == "ele-1":
                return key, "All FHIR elements must have a @value or children"
            human = next((h for k, h, _e in _table()["invariants"].get(name, []) if k == key), key)
            return key, human
    return "", ""


@cache
def r4_schema() -> dict[str, Any]:
    """The draft-07 JSON schema of every R4 resource; its root dispatches on `resourceType`."""
    table = _table()
    prims, enums = table["primitives"], table["enums"]
    defs: dict[str, Any] = {}
    for name, p in prims.items():
        defs[name] = _primitive_schema(name, p, nullable=False)
        defs[name + "?"] = _primitive_schema(name, p, nullable=True)
    element = {"type": "object", "minProperties": 1, "additionalProperties": False,
               "properties": {"id": {"$ref": "#/definitions/string"},
                              "extension": {"type": "array", "minItems": 1,
                                            "items": {"$ref": "#/definitions/Extension"}}}}
    defs["_Element"] = element
    defs["_Element?"] = {"anyOf": [{"type": "null"}, {"$ref": "#/definitions/_Element"}]}
    for name, spec in table["types"].items():
        props: dict[str, Any] = {}
        for prop, row in spec["elements"].items():
            props[prop] = _element_schema(row, prims, enums)
            if row[0] in prims:
                ext = "#/definitions/_Element" + ("?" if row[1] else "")
                props["_" + prop] = {"type": "array", "minItems": 1, "items": {"$ref": ext}} if row[1] \
                    else {"$ref": ext}
        required = set(spec.get("required", []))
        schema: dict[str, Any] = {"type": "object", "minProperties": 1, "additionalProperties": False,
                                  "properties": props}
        if spec.get("resource"):
            props["resourceType"] = {"const": name}
            required.add("resourceType")
        # A required primitive may come as its `_element` alone (an extension instead of a value).
        plain = sorted(r for r in required if r in props and "_" + r not in props)
        if plain:
            schema["required"] = plain
        rules = [{"anyOf": [{"required": [r]}, {"required": ["_" + r]}]}
                 for r in sorted(required) if r in props and "_" + r in props]
        rules += _choice_rules(spec.get("choices", {}), required)
        rules += _invariant_rules(name, spec, defs)
        if rules:
            schema["allOf"] = rules
        defs[name] = schema
    defs["Reference"]["properties"]["reference"] = {"allOf": [{"$ref": "#/definitions/string"}],
                                                    "pattern": _reference_pattern()}
    rtypes = table["resourceTypes"]
    defs["Resource"] = {
        "type": "object", "required": ["resourceType"],
        "properties": {"resourceType": {"enum": rtypes}},
        "allOf": [{"if": {"required": ["resourceType"], "properties": {"resourceType": {"const": t}}},
                   "then": {"$ref": f"#/definitions/{t}"}} for t in rtypes],
    }
    return {"$schema": "http://json-schema.org/draft-07/schema#", "allOf": [{"$ref": "#/definitions/Resource"}],
            "definitions": defs}


def in_range(datatype: str, value: int) -> bool:
    """Whether `value` fits the integer primitive `datatype` (R4 datatypes.html: 32-bit). R4's
    `Attachment.size` is an unsignedInt, so the size of content of 2 GiB or more cannot be told in it."""
    prim = _table()["primitives"][datatype]
    return bool(prim["min"] <= value <= prim["max"])


def attachment_size(size: int) -> dict[str, int]:
    """`{"size": size}` for an Attachment, or {} when R4 cannot carry that size (see in_range)."""
    return {"size": size} if in_range("unsignedInt", size) else {}


@cache
def _validator() -> Any:
    return jsonschema_rs.validator_for(r4_schema(), keywords=ORDER_KEYWORDS)


def warm_up() -> None:
    """Compile the schema now (about half a second) rather than on the first write."""
    _validator()


def validate_resource(resource: Any) -> list[Issue]:
    """Every problem of `resource` (a parsed JSON value) against the R4 base definitions.

    Returns [] for a valid resource; never raises for bad input. Issues are in document order,
    one per problem, each naming the element by FHIRPath (`Patient.birthDate`).
    """
    if not isinstance(resource, dict):
        return [Issue("error", "structure", "", "A resource must be a JSON object")]
    validator = _validator()
    declared = resource.get("resourceType")
    root = declared if isinstance(declared, str) else "Resource"
    issues: list[Issue] = []
    dumped = _json_bytes(resource)
    # The validator takes only built-in types: a resource with a Decimal is checked as plain numbers.
    checked = jsoncodec.plain(resource) if jsoncodec.is_exact(dumped) else resource
    if not validator.is_valid(checked):
        for error in validator.iter_errors(checked):
            issues.extend(_issues_of(checked, root, error))
    # Only a body with a `null` somewhere needs the walk (orjson finds out in microseconds); where the
    # schema already found a `null` out of place, that issue says it.
    if b"null" in dumped:
        reported = {i.expression for i in issues}
        issues.extend(i for i in placeholder_issues(resource, root) if i.expression not in reported)
    if b'"_' in dumped:
        reported = {i.expression for i in issues}
        issues.extend(i for i in bare_primitive_issues(resource, root) if i.expression not in reported)
    # The invariants that need code, each looked for only when its element is there at all.
    narrative = b'"div"' in dumped
    contained = b'"contained"' in dumped or b'"reference":"#' in dumped
    if narrative or contained:
        for inner, at in resources_within(resource, root):
            found = narrative_issues(inner["text"].get("div"), f"{at}.text.div") \
                if narrative and isinstance(inner.get("text"), dict) else []
            found += contained_issues(inner, at) if contained and ".contained[" not in at[len(root):] else []
            issues.extend(Issue("error", "invariant", where, f"{message} ({key})") for key, where, message in found)
    if MAY_HOLD_INTEGRAL_FLOAT.search(dumped):
        reported = {i.expression for i in issues}
        issues.extend(i for i in integral_float_issues(resource, root) if i.expression not in reported)
    if root == "Bundle" and not issues:
        issues.extend(bundle_invariant_issues(resource))
    return list(dict.fromkeys(issues))


# A number with a fraction of zeros or an exponent (`1.0`, `3.00`, `1e2`): JSON schema's "integer"
# takes it (draft 6 on: a number whose fraction is zero), R4's integer regex `-?([0]|([1-9][0-9]*))`
# does not, and other servers' parsers refuse it (HAPI: "Invalid integer representation"). Looked for
# in the compact text first (a number right after `:`, `,` or `[`), so that most resources are not walked;
# a match inside a string only costs the walk.
MAY_HOLD_INTEGRAL_FLOAT = re.compile(rb"[:,\[]-?[0-9]+(?:\.0+[,}\]]|(?:\.[0-9]+)?[eE])")
INTEGER_TYPES = ("integer", "unsignedInt", "positiveInt")


def integral_float_issues(resource: dict[str, Any], root: str) -> list[Issue]:
    """One issue for each integer, unsignedInt or positiveInt element written with a fraction or an
    exponent (R4 datatypes.html: the integer's lexical form has neither), wherever it is in `resource`."""
    found: list[list[str | int]] = []
    _integral_floats(resource, [], found)
    issues = []
    for path in found:  # document order
        dtype, value = _locate(resource, path)
        if dtype in INTEGER_TYPES:
            expression = _expression(root, path)
            written = value.text if isinstance(value, jsoncodec.Decimal) else repr(value)
            issues.append(Issue("error", "value", expression, f"{written} is not a valid {dtype}: an {dtype} is "
                                f"written without a fraction or exponent ({int(value)})"))
    return issues


def _json_bytes(resource: dict[str, Any]) -> bytes:
    """The resource as compact JSON, to look for an element's name in (marked when it holds a number
    kept from its text: jsoncodec.is_exact)."""
    return jsoncodec.dumps_stored(resource)


def resources_within(resource: dict[str, Any], root: str) -> list[tuple[dict[str, Any], str]]:
    """The resource and every resource inside it, with its FHIRPath: contained resources, a Bundle's
    `entry.resource` and `entry.response.outcome`, a Parameters' `parameter(.part).resource`, at any depth.
    Where R4 puts resources, found without walking every element."""
    out: list[tuple[dict[str, Any], str]] = []
    todo: list[tuple[Any, str]] = [(resource, root)]
    while todo:
        node, at = todo.pop()
        if not isinstance(node, dict):
            continue
        out.append((node, at))
        todo.extend(_items(node, "contained", at, lambda item, where: [(item, where)]))
        todo.extend(_items(node, "entry", at, lambda item, where: [
            (item.get("resource"), f"{where}.resource"),
            ((item.get("response") or {}).get("outcome") if isinstance(item.get("response"), dict) else None,
             f"{where}.response.outcome")]))
        params: list[tuple[Any, str]] = list(_items(node, "parameter", at, lambda item, where: [(item, where)]))
        while params:
            param, where = params.pop()
            todo.append((param.get("resource"), f"{where}.resource"))
            params.extend(_items(param, "part", where, lambda item, inner: [(item, inner)]))
    return out


def _items(node: dict[str, Any], name: str, at: str, pick: Any) -> list[tuple[Any, str]]:
    """`pick(item, path)` of each object in the array `node[name]`, flattened."""
    values = node.get(name)
    if not isinstance(values, list):
        return []
    return [found for i, item in enumerate(values) if isinstance(item, dict)
            for found in pick(item, f"{at}.{name}[{i}]") if isinstance(found[0], dict)]


def placeholder_issues(resource: Any, root: str) -> list[Issue]:
    """The `null`s of repeating primitives that stand for nothing (R4 json.html#primitive): a `null` in
    `given` holds the place of an item whose id or extensions are in `_given` at the same index, so the
    two arrays have one length and no index is `null` in both (or in `_given` alone). A `null` where no
    primitive may be is the schema's to report."""
    issues: list[Issue] = []
    _placeholders(resource, [], root, issues)
    return issues


def bare_primitive_issues(resource: Any, root: str) -> list[Issue]:
    """ele-1 for primitives (R4 json.html#primitive): a primitive's `_element` (`_birthDate`, an item of
    `_given`) holds its id and extensions, so without a value beside it, it must hold extensions: an id alone
    is an element with neither a value nor children."""
    issues: list[Issue] = []
    _bare_primitives(resource, [], root, issues)
    return issues


def _bare_primitives(node: Any, path: list[str | int], root: str, issues: list[Issue]) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, (dict, list)):
                _bare_primitives(item, [*path, i], root, issues)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key.startswith("_") and len(key) > 1:
            plain = node.get(key[1:])
            extras = value if isinstance(value, list) else [value]
            for i, extra in enumerate(extras):
                if not isinstance(extra, dict) or "extension" in extra:
                    continue
                given = plain[i] if isinstance(plain, list) and i < len(plain) else plain if not isinstance(
                    value, list) else None
                if given is None:
                    at = _expression(root, [*path, key[1:], i] if isinstance(value, list) else [*path, key[1:]])
                    issues.append(Issue("error", "invariant", at, f"{at} has neither a value nor an extension, only "
                                        "an id (ele-1: every element has a value or children)"))
        elif isinstance(value, (dict, list)):
            _bare_primitives(value, [*path, key], root, issues)


def _placeholders(node: Any, path: list[str | int], root: str, issues: list[Issue]) -> None:
    # The path is built as a list and formatted only for an issue: this walks every element of every
    # resource written, and formatting each path would cost as much as the schema validation itself.
    if isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, (dict, list)):
                _placeholders(item, [*path, i], root, issues)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if isinstance(value, dict):
            _placeholders(value, [*path, key], root, issues)
            continue
        if not isinstance(value, list):
            continue
        plain = key.lstrip("_")
        values, extras = node.get(plain), node.get("_" + plain)
        if key.startswith("_"):
            if values is not None:
                continue  # checked with the value array
        else:
            _placeholders(value, [*path, key], root, issues)
            if extras is None and None not in value:
                continue
            if any(isinstance(item, (dict, list)) for item in value):
                continue  # not a primitive array: the schema says what is wrong
        name = _expression(root, [*path, plain])
        if isinstance(values, list) and isinstance(extras, list) and len(values) != len(extras):
            issues.append(Issue("error", "structure", name, f"{name} has {len(values)} items but _{plain} has "
                                f"{len(extras)}; the two arrays must be the same length"))
            continue
        for i in range(len(value)):
            if ((not isinstance(values, list) or values[i] is None)
                    and (not isinstance(extras, list) or extras[i] is None)):
                issues.append(Issue("error", "structure", f"{name}[{i}]", f"{name}[{i}] is null with no id or "
                                    f"extension in _{plain}[{i}]; leave the item out instead"))


@cache
def _bundle_invariants() -> list[tuple[dict[str, str], Any, Any]]:
    """The Bundle invariants compiled once: each as given, and (for the entry-level ones) the same
    rule over all entries at once, so a valid Bundle costs one evaluation per rule. fhirpathpy has
    no `hasValue()`; on a JSON primitive it means what `exists()` means."""
    model = fhirpath_models["r4"]
    out = []
    for inv in _table()["bundleInvariants"]:
        expression = inv["expression"].replace("hasValue()", "exists()")
        whole = expression if inv["path"] == "Bundle" else f"entry.all({expression})"
        out.append((inv, fhirpath_compile(whole, model), fhirpath_compile(expression, model)))
    return out


def bundle_invariant_issues(bundle: dict[str, Any]) -> list[Issue]:
    """The Bundle invariants (R4 bundle.html bdl-1..bdl-12) that `bundle` breaks."""
    issues = []
    bundle = _outline(bundle)
    for inv, whole, each in _bundle_invariants():
        env = {"resource": bundle} if "%resource" in inv["expression"] else {}
        if whole(bundle, env) != [False]:
            continue
        if inv["path"] == "Bundle":
            issues.append(Issue("error", "invariant", "Bundle", f"{inv['human']} ({inv['key']})"))
            continue
        for i, entry in enumerate(bundle.get("entry", [])):
            if each(entry, env) == [False]:
                issues.append(Issue("error", "invariant", f"Bundle.entry[{i}]", f"{inv['human']} ({inv['key']})"))
    return issues


def _outline(bundle: dict[str, Any]) -> dict[str, Any]:
    """The Bundle with each entry's resource cut down to `resourceType`, `id` and `meta`: all the
    bdl-* expressions read of an entry's resource (its type, `meta.versionId`), and fhirpathpy's
    cost grows with everything it is handed."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return bundle
    outlined = []
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            entry = {**entry, "resource": {k: v for k, v in resource.items() if k in ("resourceType", "id", "meta")}}
        outlined.append(entry)
    return {**bundle, "entry": outlined}


# -- from jsonschema errors to issues ---------------------------------------------------------------
def _issues_of(resource: dict[str, Any], root: str, error: Any) -> list[Issue]:
    path = list(error.instance_path)
    kind = error.kind
    name = type(kind).__name__
    expression = _expression(root, path)
    key, human = _invariant_of(list(error.schema_path))
    if key:
        return [Issue("error", "invariant", expression, f"{expression}: {human} ({key})")]
    dtype, value = _locate(resource, path)
    if name == "AdditionalProperties":
        return [Issue("error", "structure", f"{expression}.{p}", f"Unknown element '{p}' in {dtype}")
                for p in kind.unexpected]
    if name == "Required":
        prop = kind.property
        return [Issue("error", "required", f"{expression}.{prop}",
                      f"{expression}.{prop} is required (minimum cardinality 1)")]
    if name in ("OneOfMultipleValid", "OneOfNotValid"):
        return _choice_issues(dtype, value, expression, many=name == "OneOfMultipleValid")
    if name == "AnyOf" and isinstance(value, dict):  # a required primitive: neither `x` nor `_x`
        spec = _table()["types"].get(dtype, {})
        missing = [r for r in spec.get("required", []) if r in spec["elements"] and r not in value
                   and "_" + r not in value]
        return [Issue("error", "required", f"{expression}.{r}", f"{expression}.{r} is required (minimum cardinality 1)")
                for r in missing] or [Issue("error", "structure", expression, error.message)]
    return [_value_issue(name, kind, expression, dtype, value)]


def _value_issue(name: str, kind: Any, expression: str, dtype: str, value: Any) -> Issue:
    shown = _show(value)
    if name == "Type":
        if isinstance(value, float) and not math.isfinite(value):
            return Issue("error", "value", expression, f"{value} is not a number JSON can carry")
        if value is None and dtype in _table()["primitives"]:
            return Issue("error", "value", expression, f"{expression} is null; leave the element out instead")
        if isinstance(value, list):
            return Issue("error", "structure", expression, f"{expression} repeats at most once: send one {dtype}, "
                         "not an array")
        expected = ", ".join(str(t) for t in kind.types) if hasattr(kind, "types") else "another type"
        if "array" in expected:
            return Issue("error", "structure", expression, f"{expression} repeats: send an array of {dtype}")
        return Issue("error", "value", expression, f"{shown} is not a valid {dtype} (expected a JSON {expected})")
    if name == "Pattern":
        if dtype == "Reference.reference":
            return Issue("error", "value", expression, f"{shown} is not a valid reference: expected Type/id, "
                         "Type/id/_history/vid, an absolute URL, urn:uuid:, urn:oid: or #id")
        return Issue("error", "value", expression, f"{shown} is not a valid {dtype}")
    if name == "Enum":
        codes = list(kind.options) if hasattr(kind, "options") else []
        listed = ", ".join(str(c) for c in codes[:12] if c is not None) + (", ..." if len(codes) > 12 else "")
        if expression.endswith("resourceType"):
            return Issue("error", "value", expression, f"{shown} is not an R4 resource type")
        return Issue("error", "code-invalid", expression,
                     f"{shown} is not a code of the required value set (one of: {listed})")
    if name == "Constant":
        return Issue("error", "value", expression, f"{shown} is not the resource type expected here")
    if name in ("Minimum", "Maximum"):
        prim = _table()["primitives"].get(dtype, {})
        return Issue("error", "value", expression,
                     f"{shown} is out of range for {dtype} ({prim.get('min')}..{prim.get('max')})")
    if name in ("MinItems", "MinProperties", "MinLength"):
        what = {"MinItems": "array", "MinProperties": "object", "MinLength": "string"}[name]
        return Issue("error", "structure", expression, f"{expression} is an empty {what}; leave the element out "
                     "instead (FHIR has no empty elements)")
    if name == "MaxLength":
        return Issue("error", "value", expression, f"{expression} holds {len(value):,} characters; an R4 string holds "
                     f"at most {STRING_MAX_CHARACTERS:,} (1 MB): keep larger content in an Attachment or a Binary")
    return Issue("error", "structure", expression, str(getattr(kind, "message", None) or name))


def _choice_issues(dtype: str, value: Any, expression: str, many: bool) -> list[Issue]:
    spec = _table()["types"].get(dtype, {})
    out = []
    for base, names in spec.get("choices", {}).items():
        present = [n for n in names if isinstance(value, dict) and n in value]
        if many and len(present) > 1:
            out.append(Issue("error", "structure", f"{expression}.{base}",
                             f"Only one of {base}[x] may be present; found {', '.join(present)}"))
        elif not many and not present and base in spec.get("required", []):
            out.append(Issue("error", "required", f"{expression}.{base}", f"{expression}.{base}[x] is required"))
    return out or [Issue("error", "structure", expression, f"{expression} breaks a choice-type rule")]


def _expression(root: str, path: list[str | int]) -> str:
    out = root
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _integral_floats(node: Any, path: list[str | int], found: list[list[str | int]]) -> None:
    """Appends to `found` the path of each float with a zero fraction under `node` (recursion is bounded
    by the parser's MAX_JSON_DEPTH; one shared path list keeps the walk cheap)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, (dict, list)):
            path.append(key)
            _integral_floats(value, path, found)
            path.pop()
        elif isinstance(value, float) and value.is_integer():
            found.append([*path, key])


# The elements of a primitive's `_element` (R4 json.html#primitive): its id and extensions.
PRIMITIVE_EXTENSION_ELEMENTS: dict[str, list[Any]] = {"id": ["string", False], "extension": ["Extension", True]}


def _locate(resource: dict[str, Any], path: list[str | int]) -> tuple[str, Any]:
    """The datatype (or `Type.element` for a pattern on an element) and the value at `path`."""
    types = _table()["types"]
    dtype: str = str(resource.get("resourceType"))
    node: Any = resource
    for i, part in enumerate(path):
        node = _child(node, part)
        if isinstance(part, int):
            continue
        elements: dict[str, list[Any]] = PRIMITIVE_EXTENSION_ELEMENTS if dtype == "Element" \
            else types.get(dtype, {}).get("elements", {})
        row = elements.get(part.lstrip("_"))
        if part.startswith("_"):
            dtype = "Element"
        elif row is None:
            dtype = "?"
        elif row[0] == "Resource":
            # the resource itself (Bundle.entry.resource), or one of a list (contained) by the next step
            target = node if isinstance(node, dict) else _child(node, path[i + 1]) if i + 1 < len(path) else None
            dtype = str(target.get("resourceType")) if isinstance(target, dict) else "Resource"
        else:
            dtype = "Reference.reference" if (dtype, part) == ("Reference", "reference") else str(row[0])
    return dtype, node


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict) and isinstance(part, str):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return node if isinstance(part, int) and not isinstance(node, list) else None


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."
