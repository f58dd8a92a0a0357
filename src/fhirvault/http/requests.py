"""Reading request bodies with a size bound."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import Request

from fhirvault.errors import Invalid, TooLarge, Unsupported
from fhirvault.fhir.patch import FHIRPATH_PATCH, JSON_PATCH, MERGE_PATCH, PatchDocument
from fhirvault.fhir.r4 import whole_number
from fhirvault.http.negotiation import is_fhir_json, media_type, speaks_fhir_version

JSON_PATCH_TYPE = "application/json-patch+json"
MERGE_PATCH_TYPE = "application/merge-patch+json"


async def read_body_bounded(request: Request, limit: int, what: str) -> bytes:
    """The whole request body (already decoded from its content coding), refusing with TooLarge as soon as a
    declared Content-Length or the bytes received exceed `limit` bytes; `what` names the body in the
    message."""
    declared = request.headers.get("content-length")
    if declared and (whole_number(declared) or 0) > limit:
        raise TooLarge(f"{what} of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"{what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# Deeper than any FHIR resource nests (Questionnaire items, Bundles in Bundles stay far below), and far
# below what the recursive walks over a resource (copying, indexing, rendering) can take.
MAX_JSON_DEPTH = 128


def _refuse_constant(name: str) -> Any:
    raise Invalid(f"The request body holds {name}, which is not a JSON number (RFC 8259); FHIR has no such value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise Invalid(f"The number {text[:40]}{'...' if len(text) > 40 else ''} is too large to be kept")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise Invalid(f"The request body has the property '{key}' twice in one object")
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
            raise Invalid(f"The request body nests deeper than {MAX_JSON_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def parse_json(raw: bytes) -> Any:
    """The JSON value of a request body, strictly (RFC 8259): Invalid for bytes that are not UTF-8, bad
    syntax, NaN/Infinity, a property given twice in one object, integers over Python's 4,300-digit
    conversion limit, or nesting deeper than MAX_JSON_DEPTH. Nothing that could not be written back out
    as valid JSON gets in."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float,
                            object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise Invalid("The request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise Invalid(f"The request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
            from None
    except RecursionError:
        raise Invalid(f"The request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer literal over the int conversion limit
        raise Invalid(f"The request body holds a value that cannot be read: {exc}") from None
    _check_depth(value)
    if LONE_SURROGATE_ESCAPE.search(raw):
        _refuse_lone_surrogates(value)
    if NUL_ESCAPE in raw and _holds_nul(value):
        raise Invalid("The request body holds a NUL character (\\u0000) in a string: FHIR text cannot carry it")
    return value


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
        raise Invalid("The request body holds a string with an unpaired UTF-16 surrogate escape (\\uD800-"
                      "\\uDFFF): it is no Unicode character") from None


async def read_fhir_json(request: Request, limit: int) -> Any:
    """The request body as JSON; a Content-Type other than FHIR JSON R4 raises Unsupported (415)."""
    ctype = request.headers.get("content-type")
    if ctype and not is_fhir_json(ctype):
        raise Unsupported(
            f"Content-Type '{media_type(ctype)}' is not supported here; send application/fhir+json")
    _check_fhir_version(ctype)
    return await _read_json(request, limit)


def _check_fhir_version(ctype: str | None) -> None:
    if not speaks_fhir_version(ctype):
        raise Unsupported(f"Content-Type '{ctype}' names another FHIR version; this server speaks fhirVersion=4.0")


async def _read_json(request: Request, limit: int) -> Any:
    raw = await read_body_bounded(request, limit, "The JSON body")
    if not raw.strip():
        raise Invalid("The request body is empty; a FHIR resource was expected")
    return parse_json(raw)


async def read_patch_document(request: Request, limit: int) -> PatchDocument:
    """A PATCH body by its Content-Type (R4 http.html#patch).

    application/json-patch+json: JSON Patch (RFC 6902); application/merge-patch+json: JSON Merge Patch
    (RFC 7386); FHIR JSON (application/fhir+json, application/json, none): a Parameters resource is a
    FHIRPath Patch, an array a JSON Patch, any other object a merge patch (what fhirpy's `patch()`
    sends). Anything else raises Unsupported (415).
    """
    ctype = request.headers.get("content-type")
    kind = media_type(ctype)
    if kind not in (JSON_PATCH_TYPE, MERGE_PATCH_TYPE) and ctype and not is_fhir_json(ctype):
        raise Unsupported(f"Content-Type '{kind}' is not a patch format this server applies; send "
                          f"{JSON_PATCH_TYPE}, {MERGE_PATCH_TYPE}, or application/fhir+json (a FHIRPath Patch "
                          "Parameters resource)")
    _check_fhir_version(ctype)
    body = await _read_json(request, limit)
    if kind == JSON_PATCH_TYPE or (kind != MERGE_PATCH_TYPE and isinstance(body, list)):
        return PatchDocument(JSON_PATCH, body)
    if kind != MERGE_PATCH_TYPE and isinstance(body, dict) and body.get("resourceType") == "Parameters":
        return PatchDocument(FHIRPATH_PATCH, body)
    return PatchDocument(MERGE_PATCH, body)
