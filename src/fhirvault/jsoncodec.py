"""JSON text in and out of the server: orjson where it can, the standard library where orjson cannot."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (no ASCII escaping), as bytes. orjson does this several times faster than the
    standard library; it refuses integers beyond 64 bits and non-string keys, which then go the slow
    way. Raises TypeError / ValueError for what no JSON can hold."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def loads(text: bytes | str) -> Any:
    """Parses JSON the server wrote itself (stored resources, rows). orjson refuses some JSON the standard
    library writes and reads back (integers beyond 64 bits, NaN): those are parsed the slow way.
    Raises json.JSONDecodeError (orjson's is a subclass) for text that is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
