"""Reading request bodies with a size bound."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from fhirvault.errors import Invalid, TooLarge, Unsupported
from fhirvault.http.negotiation import is_fhir_json, media_type


async def read_body_bounded(request: Request, limit: int, what: str) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"{what} of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"{what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise Invalid("The request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise Invalid(f"The request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
            from None


async def read_fhir_json(request: Request, limit: int) -> Any:
    ctype = request.headers.get("content-type")
    if ctype and not is_fhir_json(ctype):
        raise Unsupported(
            f"Content-Type '{media_type(ctype)}' is not supported here; send application/fhir+json")
    raw = await read_body_bounded(request, limit, "The JSON body")
    if not raw.strip():
        raise Invalid("The request body is empty; a FHIR resource was expected")
    return parse_json(raw)
