"""R4 invariants (StructureDefinition constraints, severity error) as JSON-schema rules, and the ones
that need code: contained resources and their references (ref-1, dom-2..5) and the XHTML narrative
(txt-1, txt-2).

An invariant whose FHIRPath is a boolean combination of element presence tests (`a.exists()`,
`a.empty()`, `a.hasValue()`, `.not()`, joined by one of `or`, `and`, `implies`, `xor`, `!=`, `=`) is
translated to JSON schema by `presence_rule`; `ele-1` (an element has a value or children) by
`element_rule`; the order rules per-1 (Period) and rng-2 (Range) by custom keywords (ORDER_RULES).
Other comparisons, string functions and terminology are not translated: scripts/gen_fhir_validation.py
lists which invariants the table carries and which it leaves out.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from fhirvault.fhir.dates import date_range

if TYPE_CHECKING:
    from jsonschema_rs import KeywordValidator

# -- presence invariants -> JSON schema -------------------------------------------------------------
_TOKEN = re.compile(r"\s*(\(|\)(?:\.not\(\))?|[a-z][A-Za-z0-9]*(?:\.(?:exists|empty|hasValue|not)\(\))+|or|and"
                    r"|implies|xor|!=|=)")
_OPERATORS = {"or", "and", "implies", "xor", "!=", "="}


class NotTranslatable(ValueError):
    """The FHIRPath expression is more than presence tests; it stays unchecked (or is checked in code)."""


def presence_rule(expression: str, choices: dict[str, list[str]]) -> dict[str, Any]:
    """The JSON schema (on the element's object) equivalent to a presence invariant such as
    `code.empty() or system.exists()` (qty-3) or `extension.exists() != value.exists()` (ext-1).

    `choices` maps a choice element's base name to its JSON names (`value` -> `valueString`, ...), so that
    `value.exists()` means any of them. A primitive counts as present with its `_name` sibling too (FHIRPath
    `exists()` sees the element whether or not it has a value); `hasValue()` needs the value itself.
    Raises NotTranslatable for anything else."""
    tokens = _tokens(expression)
    rule, rest = _expression(tokens, choices)
    if rest:
        raise NotTranslatable(expression)
    return rule


def _tokens(expression: str) -> list[str]:
    out, pos = [], 0
    text = expression.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise NotTranslatable(expression)
        out.append(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _expression(tokens: list[str], choices: dict[str, list[str]]) -> tuple[dict[str, Any], list[str]]:
    terms: list[dict[str, Any]] = []
    operator: str | None = None
    term, tokens = _term(tokens, choices)
    terms.append(term)
    while tokens and tokens[0] in _OPERATORS:
        if operator is not None and tokens[0] != operator:
            raise NotTranslatable("mixed operators without parentheses")
        operator = tokens[0]
        term, tokens = _term(tokens[1:], choices)
        terms.append(term)
    if operator is None:
        return terms[0], tokens
    if operator == "or":
        return {"anyOf": terms}, tokens
    if operator == "and":
        return {"allOf": terms}, tokens
    if len(terms) != 2:
        raise NotTranslatable(f"{operator} of more than two terms")
    if operator == "implies":
        return {"anyOf": [{"not": terms[0]}, terms[1]]}, tokens
    if operator == "=":  # both or neither
        return {"anyOf": [{"allOf": terms}, {"allOf": [{"not": t} for t in terms]}]}, tokens
    return {"oneOf": terms}, tokens  # xor, != : exactly one holds


def _term(tokens: list[str], choices: dict[str, list[str]]) -> tuple[dict[str, Any], list[str]]:
    if not tokens:
        raise NotTranslatable("expression ends early")
    if tokens[0] == "(":
        inner, rest = _expression(tokens[1:], choices)
        if not rest or not rest[0].startswith(")"):
            raise NotTranslatable("unbalanced parentheses")
        return ({"not": inner} if rest[0] == ").not()" else inner), rest[1:]
    name, *calls = tokens[0].replace("()", "").split(".")
    if not calls or calls[0] == "not":
        raise NotTranslatable(tokens[0])
    names = choices.get(name, [name])
    if calls[0] == "hasValue":
        rule: dict[str, Any] = {"anyOf": [{"required": [n]} for n in names]}
    else:
        rule = {"anyOf": [{"required": [p]} for n in names for p in (n, "_" + n)]}
    negated = calls[0] == "empty"
    for call in calls[1:]:
        if call != "not":
            raise NotTranslatable(tokens[0])
        negated = not negated
    return ({"not": rule} if negated else rule), tokens[1:]


# -- order invariants: custom schema keywords run by the Rust validator where the type occurs ---------
class PeriodOrder:
    """per-1 (`start <= end`) as the schema keyword `fhirPeriodOrder`: refused only when `start` lies
    wholly after `end` at their precisions (`2020-01-02` after `2020-01-01`); values of different
    precision that overlap are, as FHIRPath's comparison of them, not a failure."""

    def __init__(self, _parent: Any, _value: Any, _path: Any) -> None:
        pass

    def validate(self, instance: Any) -> None:
        """Raises ValueError when the Period's start is after its end; anything it cannot read (a
        malformed date) is left to the datatype's own rule."""
        if not isinstance(instance, dict):
            return
        start, end = instance.get("start"), instance.get("end")
        if not isinstance(start, str) or not isinstance(end, str):
            return
        try:
            if date_range(start)[0] >= date_range(end)[1]:
                raise ValueError(f"start {start} is after end {end}")
        except ValueError as exc:
            if str(exc).startswith("start "):
                raise


class RangeOrder:
    """rng-2 (`low <= high`) as the schema keyword `fhirRangeOrder`: refused when both values are given in
    the same unit (same code and system, or the same unit text, or neither) and low is above high."""

    def __init__(self, _parent: Any, _value: Any, _path: Any) -> None:
        pass

    def validate(self, instance: Any) -> None:
        """Raises ValueError when the Range's low is above its high in one unit."""
        if not isinstance(instance, dict):
            return
        low, high = instance.get("low"), instance.get("high")
        if not isinstance(low, dict) or not isinstance(high, dict):
            return
        a, b = low.get("value"), high.get("value")
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or isinstance(a, bool) or isinstance(
                b, bool):
            return
        same_unit = ((low.get("system"), low.get("code")) == (high.get("system"), high.get("code"))
                     and (low.get("code") is not None or low.get("unit") == high.get("unit")))
        if same_unit and a > b:
            raise ValueError(f"low {a} is above high {b}")


ORDER_KEYWORDS: dict[str, type[KeywordValidator]] = {"fhirPeriodOrder": PeriodOrder, "fhirRangeOrder": RangeOrder}
ORDER_RULES = {"per-1": {"fhirPeriodOrder": True}, "rng-2": {"fhirRangeOrder": True}}  # by invariant key


def element_rule() -> dict[str, Any]:
    """ele-1 (`hasValue() or (children().count() > id.count())`) on a complex element's object: something
    besides its `id` (an extension, a value)."""
    return {"not": {"required": ["id"], "maxProperties": 1}}


# -- the invariants that need code ------------------------------------------------------------------
def contained_issues(resource: dict[str, Any], root: str) -> list[tuple[str, str, str]]:
    """ref-1 and dom-2..dom-5 (R4 references.html#contained, domainresource.html) as (key, expression,
    message) triples: a `#id` reference names a contained resource; a contained resource holds no
    contained resources, no meta.versionId / lastUpdated / security, and is referenced from the resource
    (a `#id` reference, canonical or uri, as dom-3's FHIRPath counts them, or its own `url`) or references
    the resource (`#`)."""
    contained = resource.get("contained")
    contained = contained if isinstance(contained, list) else []
    strings = _strings(resource)
    out: list[tuple[str, str, str]] = []
    ids = {c.get("id") for c in contained if isinstance(c, dict)}
    for where, key, value in strings:
        if key == "reference" and value.startswith("#") and value != "#" and value[1:] not in ids:
            out.append(("ref-1", f"{root}{where}", f"The reference '{value}' names no contained resource"))
    outside = {value for where, _key, value in strings if not where.startswith(".contained[")}
    for i, item in enumerate(contained):
        if not isinstance(item, dict):
            continue
        at = f"{root}.contained[{i}]"
        meta: dict[str, Any] = item["meta"] if isinstance(item.get("meta"), dict) else {}
        if "contained" in item:
            out.append(("dom-2", at, "A contained resource holds no contained resources of its own"))
        if "versionId" in meta or "lastUpdated" in meta:
            out.append(("dom-4", at, "A contained resource has no meta.versionId or meta.lastUpdated"))
        if "security" in meta:
            out.append(("dom-5", at, "A contained resource has no security label (meta.security)"))
        inner = {value for where, _key, value in strings if where.startswith(f".contained[{i}]")}
        named = {f"#{item.get('id')}", item.get("url")} & outside
        if not named and "#" not in inner:
            out.append(("dom-3", at, f"The contained resource '{item['id']}' is not referenced from the "
                        "resource, and does not reference it ('#')" if isinstance(item.get("id"), str) else
                        "The contained resource has no id, so the resource cannot reference it ('#id'), and it "
                        "does not reference the resource ('#')"))
    return out


def _strings(node: Any) -> list[tuple[str, str, str]]:
    """Every string value of the resource `node` and its contained resources as (path of its parent, key,
    value), the path like `.contained[0].code`; resources inside it otherwise (a Bundle's entries, a
    Parameters' values) are resources of their own, their strings are not its."""
    out: list[tuple[str, str, str]] = []
    stack: list[tuple[Any, str, str]] = [(node, "", "")]
    while stack:
        item, at, key = stack.pop()
        if isinstance(item, dict):
            if at and "resourceType" in item and not (at.startswith(".contained[") and at.count(".") == 1):
                continue
            for k, value in item.items():
                if isinstance(value, str):
                    out.append((at, k, value))
                elif isinstance(value, (dict, list)):
                    stack.append((value, f"{at}.{k}", k))
        elif isinstance(item, list):
            for i, value in enumerate(item):
                if isinstance(value, str):
                    out.append((f"{at}[{i}]", key, value))
                elif isinstance(value, (dict, list)):
                    stack.append((value, f"{at}[{i}]", key))
    return sorted(out)


def _script_url(attribute: str, element: str, value: str) -> bool:
    """Whether a link runs code when followed: `javascript:` / `vbscript:` anywhere, and a `data:` URL as
    an `<a href>` (a page of its own; `<img src="data:...">` stays, it shows an image). Browsers ignore
    white space and control characters inside the scheme, so they are left out before comparing."""
    if attribute not in ("href", "src"):
        return False
    scheme = "".join(c for c in value.split(":", 1)[0] if c > " ").lower() if ":" in value else ""
    return scheme in ("javascript", "vbscript") or (scheme == "data" and element != "img")


XHTML = "http://www.w3.org/1999/xhtml"
# R4 narrative.html#xhtml: "basic HTML formatting elements and attributes described in chapters 7-11
# (except section 4 of chapter 9) and 15 of the HTML 4.0 standard, <a> elements (either name or href),
# images and internally contained style attributes"; no head or body, scripts, forms, base/link/xlink,
# frames, iframes, objects, or event attributes. The elements of those chapters:
NARRATIVE_ELEMENTS = frozenset(str.split(
    "div span p br h1 h2 h3 h4 h5 h6 address bdo "  # ch. 7 (global structure), 8 (bdo)
    "em strong dfn code samp kbd var cite abbr acronym blockquote q sub sup pre "  # ch. 9 (less 9.4)
    "ul ol li dl dt dd dir menu "  # ch. 10 (lists)
    "table caption thead tfoot tbody colgroup col tr th td "  # ch. 11 (tables)
    "tt i b big small strike s u font basefont hr center "  # ch. 15 (alignment, font styles, rules)
    "a img map area"))
NARRATIVE_ATTRIBUTES = frozenset(str.split(
    "id class style title lang dir xml:lang "  # core and i18n attributes (HTML 4.0 7.5.4, 8.1, 14.2.2)
    "href name hreflang rel rev charset type shape coords "  # a, area (ch. 12 is allowed for <a>)
    "src alt longdesc height width usemap ismap border hspace vspace align valign "  # img, alignment
    "summary frame rules cellspacing cellpadding abbr axis headers scope rowspan colspan span char charoff "
    "nowrap bgcolor start value compact cite datetime size color face clear noshade nohref"))


def narrative_issues(div: Any, expression: str) -> list[tuple[str, str, str]]:
    """txt-1 and txt-2 on a `Narrative.div` (R4 narrative.html#xhtml) as (key, expression, message):
    well-formed XHTML whose root is a `div` in the XHTML namespace, only the elements and attributes of
    the FHIR subset (no script, no event attributes such as onclick, no `javascript:` links), and some
    non-whitespace text or an image."""
    if not isinstance(div, str):
        return []
    if "<!" in div.replace("<!--", "") or "<?" in div:
        # Refused before parsing: a DTD's entities can make the parser expand kilobytes into gigabytes
        # (expat stops that, but only after seconds of work), and XHTML narrative has neither DTDs,
        # CDATA sections nor processing instructions.
        return [("txt-1", expression, "The narrative holds a DOCTYPE, CDATA section or processing instruction, "
                 "which FHIR's XHTML does not allow")]
    try:
        root = ElementTree.fromstring(div)
    except ElementTree.ParseError as exc:
        if "undefined entity" in str(exc):
            # R4 narrative.html#xhtml: the narrative is XML, which has no HTML entities (&nbsp;, &copy;)
            return [("txt-1", expression, f"The narrative uses an HTML entity, which XHTML in FHIR does not have "
                     f"({exc}): write the character itself or a numeric reference (&#160; for &nbsp;)")]
        return [("txt-1", expression, f"The narrative is not well-formed XHTML: {exc}")]
    out: list[tuple[str, str, str]] = []
    if root.tag != f"{{{XHTML}}}div":
        out.append(("txt-1", expression, "The narrative's root element must be a div in the XHTML namespace "
                    f"(<div xmlns=\"{XHTML}\">)"))
    bad: set[str] = set()
    for element in root.iter():
        ns, _, name = element.tag.rpartition("}")
        if name not in NARRATIVE_ELEMENTS or ns.lstrip("{") not in (XHTML, ""):  # no namespace: said above
            bad.add(f"the element <{name}>")
        for attribute, value in element.attrib.items():
            plain = attribute.replace(f"{{{XHTML}}}", "").replace("{http://www.w3.org/XML/1998/namespace}", "xml:")
            if plain not in NARRATIVE_ATTRIBUTES:
                bad.add(f"the attribute {plain}")
            elif _script_url(plain, name, value):
                bad.add(f"a {''.join(c for c in value.split(':', 1)[0] if c > ' ').lower()}: {plain}")
    if bad:
        out.append(("txt-1", expression, "The narrative may only hold the basic HTML of FHIR's XHTML subset; "
                    f"not allowed: {', '.join(sorted(bad))}"))
    has_text = any(t.strip() for t in root.itertext())
    if not has_text and not any(e.tag == f"{{{XHTML}}}img" for e in root.iter()):
        out.append(("txt-2", expression, "The narrative has no text: give it some non-whitespace content"))
    return out
