"""JSON text in and out of the server: orjson where it can, the standard library where orjson cannot."""

from __future__ import annotations

import decimal
import json
import math
import re
from typing import Any

import orjson


class Decimal(float):
    """A JSON number kept as it was written (`text`) where a float would lose its form: `1.50`, `1e2`,
    more significant digits than a double holds. FHIR's decimal keeps its precision ("the precision of
    the decimal value has significance": R4 datatypes.html#decimal), so a value sent as `1.50` is stored
    and answered as `1.50`. Arithmetic and comparisons see the float; `dumps` writes `text` back."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> Decimal:
        """The number of the JSON number literal `text` (as RFC 8259 spells it)."""
        number = super().__new__(cls, text)
        number.text = text
        return number


def number(text: str) -> float:
    """The value of a JSON number literal with a fraction or exponent: a plain float where the float
    writes back as the same text, else a `Decimal` that remembers the text. A literal with an exponent
    is always a Decimal: Python and orjson spell exponents differently (`1e-05` / `0.00001`,
    `1.5e-07` / `1.5e-7`), so a float would not write it back as it came."""
    value = float(text)
    return value if repr(value) == text and "e" not in text and "E" not in text else Decimal(text)


def plain(value: Any) -> Any:
    """A copy of the JSON value `value` with each `Decimal` made a plain float, for libraries that take
    only the exact built-in types (the JSON-schema validator)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return float(value) if isinstance(value, Decimal) else value


def _fragment(value: Any) -> Any:
    """orjson's hook for what it does not write itself: a Decimal as its own text, and the standard
    library's `decimal.Decimal` (how Python code spells a precise decimal, `decimal.Decimal("1.50")`) as
    its text too. Raises TypeError for anything else, ValueError for a non-finite `decimal.Decimal`."""
    if isinstance(value, Decimal):
        return orjson.Fragment(value.text)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a number JSON can carry")
        return orjson.Fragment(str(value))
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _with_fragments(value: Any) -> Any:
    """`value` with integers beyond 64 bits (which orjson refuses) made into their literal text."""
    if isinstance(value, dict):
        return {k: _with_fragments(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_fragments(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64:
        return orjson.Fragment(str(value))
    return value


def dumps(value: Any, indent: bool = False, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON (no ASCII escaping), as bytes; `indent`: two spaces per level (`_pretty`);
    `sort_keys`: object members in key order (one text per JSON value, for comparing values).
    Decimals are written as they were read. orjson does this several times faster than the standard
    library; integers beyond 64 bits take a slower path, and non-string keys the standard library's.
    Raises TypeError / ValueError for what no JSON can hold."""
    option = (orjson.OPT_INDENT_2 if indent else 0) | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    try:
        return orjson.dumps(value, default=_fragment, option=option)
    except TypeError as exc:
        if isinstance(exc.__cause__, ValueError):  # orjson wraps what `_fragment` raised
            raise exc.__cause__ from None
    try:
        return orjson.dumps(_with_fragments(value), default=_fragment, option=option)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, indent=2 if indent else None, sort_keys=sort_keys,
                          separators=None if indent else (",", ":")).encode("utf-8")


# Stored JSON that holds a number kept from its text (a Decimal, or an integer beyond 64 bits) starts with
# this one space (JSON allows whitespace before a value; orjson never writes it): `loads` then reads the
# numbers with their written form, and every other stored text keeps orjson's speed without a scan.
EXACT_MARK = b" "


class _Exact:
    """orjson's `default` hook for `dumps_stored`, remembering whether it wrote a number from its text."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = False

    def __call__(self, value: Any) -> Any:
        fragment = _fragment(value)
        self.used = True
        return fragment


def dumps_stored(value: Any) -> bytes:
    """`dumps(value)` for the database: with EXACT_MARK in front when the text holds a number that a float
    would not write back the same (see `loads`). Raises as `dumps` does."""
    hook = _Exact()
    try:
        text = orjson.dumps(value, default=hook)
    except TypeError as exc:
        if isinstance(exc.__cause__, ValueError):  # orjson wraps what `_fragment` raised
            raise exc.__cause__ from None
        return EXACT_MARK + dumps(value)  # integers beyond 64 bits, or what `dumps` refuses (it raises)
    return EXACT_MARK + text if hook.used else text


def is_exact(raw: bytes) -> bool:
    """Whether `raw`, written by `dumps_stored`, holds numbers kept from their text."""
    return raw[:1] == EXACT_MARK


def loads(text: bytes | str) -> Any:
    """Parses JSON the server wrote itself (stored resources, rows): text marked by `dumps_stored` with its
    numbers in their written form (see `Decimal`), any other with orjson. orjson refuses some JSON the
    standard library writes and reads back (integers beyond 64 bits, NaN): those are parsed the slow way.
    Raises json.JSONDecodeError (orjson's is a subclass) for text that is not JSON."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if raw[:1] == EXACT_MARK:
        return json.loads(raw, parse_float=number)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw, parse_float=number)


def loads_exact(text: bytes | str) -> Any:
    """Parses any JSON text (an answer's body, a file) with its numbers in their written form (see
    `Decimal`), at the standard library's speed. Raises json.JSONDecodeError for text that is not JSON."""
    return json.loads(text, parse_float=number)


class StrictJsonError(ValueError):
    """JSON a client sent that the server does not take in (see `loads_strict`); the message says why."""


# Deeper than any FHIR resource nests (Questionnaire items, Bundles in Bundles stay far below), and far
# below what the recursive walks over a resource (copying, indexing, rendering) can take.
MAX_JSON_DEPTH = 128


def _refuse_constant(name: str) -> Any:
    raise StrictJsonError(f"The request body holds {name}, which is not a JSON number (RFC 8259); "
                          "FHIR has no such value")


def _finite_number(text: str) -> float:
    value = number(text)
    if math.isinf(value):
        raise StrictJsonError(f"The number {text[:40]}{'...' if len(text) > 40 else ''} is too large to be kept")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJsonError(f"The request body has the property '{key}' twice in one object")
            seen.add(key)
    return obj


def _check_depth(value: Any) -> None:
    """Invalid when arrays and objects nest deeper than MAX_JSON_DEPTH (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > MAX_JSON_DEPTH:
            raise StrictJsonError(f"The request body nests deeper than {MAX_JSON_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def loads_strict(raw: bytes) -> Any:
    """The JSON value of a request body, strictly (RFC 8259): StrictJsonError for bytes that are not UTF-8, bad
    syntax, NaN/Infinity, a property given twice in one object, integers over Python's 4,300-digit
    conversion limit, or nesting deeper than MAX_JSON_DEPTH. Nothing that could not be written back out
    as valid JSON gets in. Numbers with a fraction or exponent keep their written form (see `Decimal`)."""
    try:
        # Decoded here, as UTF-8 (RFC 8259 8.1; a UTF-8 byte order mark is ignored, as it allows):
        # json.loads on bytes would guess UTF-16 or UTF-32 from the first bytes and take those too.
        value = json.loads(raw.decode("utf-8-sig"), parse_constant=_refuse_constant, parse_float=_finite_number,
                            object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise StrictJsonError("The request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise StrictJsonError(f"The request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                              f"column {exc.colno}") from None
    except RecursionError:
        raise StrictJsonError(f"The request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except StrictJsonError:
        raise
    except ValueError as exc:  # e.g. an integer literal over the int conversion limit
        raise StrictJsonError(f"The request body holds a value that cannot be read: {exc}") from None
    _check_depth(value)
    if LONG_DIGIT_RUN.search(raw):
        _refuse_integers_beyond_float(value)
    if LONE_SURROGATE_ESCAPE.search(raw):
        _refuse_lone_surrogates(value)
    if NUL_ESCAPE in raw and _holds_nul(value):
        raise StrictJsonError("The request body holds a NUL character (\\u0000) in a string: FHIR text cannot carry it")
    return value


# The fewest digits of an integer that a float cannot hold (the largest double, ~1.8e308, has 309):
# looked for in the raw bytes first, so ordinary bodies are not walked.
LONG_DIGIT_RUN = re.compile(rb"[0-9]{309}")


def _refuse_integers_beyond_float(value: Any) -> None:
    """Invalid when an integer is beyond the largest float: the search index, comparisons and every
    client's JSON library see numbers as doubles, so it would be refused at the first use (as a number
    with a fraction of that size already is, in `_finite_number`)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            try:
                float(item)
            except OverflowError:
                text = str(item)
                raise StrictJsonError(f"The number {text[:40]}... ({len(text)} digits) is too large to be kept") \
                    from None


NUL_ESCAPE = b"\\u0000"  # how JSON spells U+0000 (unescaped control characters are not JSON at all)


def _holds_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# A `\uD800`-`\uDFFF` escape: JSON's only way to spell a UTF-16 surrogate, which outside a pair is no
# Unicode character (RFC 8259 8.2) and cannot be stored or sent as UTF-8. Looked for in the raw bytes
# first, so ordinary bodies are not walked.
LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(value: Any) -> None:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise StrictJsonError("The request body holds a string with an unpaired UTF-16 surrogate escape (\\uD800-"
                      "\\uDFFF): it is no Unicode character") from None
