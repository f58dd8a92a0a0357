"""FHIR knowledge about Binary: strict base64, the kept file name, the securityContext reference."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from fhirvault.fhir.r4 import ID, is_resource_type

# R4's Binary has no `extension` of its own; Meta (an Element) does, so the file name lives there.
FILENAME_EXTENSION_URL = "urn:fhirvault:binary-filename"
DEFAULT_CONTENT_TYPE = "application/octet-stream"

_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
_WHITESPACE = re.compile(r"[ \t\r\n]+")
_REFERENCE = re.compile(rf"^[A-Z][A-Za-z]+/{ID}\Z")


def decode_base64_strict(text: Any, where: str) -> bytes:
    """The bytes of a base64Binary value; ValueError naming the problem when it is not strict base64
    (whitespace between the characters is allowed, as in FHIR's base64Binary)."""
    if not isinstance(text, str):
        raise ValueError(f"{where} must be a base64 string")
    compact = _WHITESPACE.sub("", text) if any(c in text for c in " \t\r\n") else text
    bad = _NOT_BASE64.search(compact)
    if bad:
        raise ValueError(f"{where} is not valid base64: character {bad.group()!r} at position {bad.start()}")
    if len(compact) % 4:
        raise ValueError(f"{where} is not valid base64: its length {len(compact)} is not a multiple of 4")
    pad = compact.find("=")
    if pad != -1 and (pad < len(compact) - 2 or compact[pad:].strip("=")):
        raise ValueError(f"{where} is not valid base64: '=' padding in the middle at position {pad}")
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{where} is not valid base64: {exc}") from None


def filename_of(binary: dict[str, Any]) -> str | None:
    """The file name kept in a Binary's meta extension (FILENAME_EXTENSION_URL), or None."""
    for ext in (binary.get("meta") or {}).get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == FILENAME_EXTENSION_URL:
            value = ext.get("valueString")
            return value if isinstance(value, str) else None
    return None


def set_filename(binary: dict[str, Any], filename: str | None) -> None:
    """Keep `filename` as the Binary's file name extension (None removes it)."""
    meta = dict(binary.get("meta") or {})
    others = [e for e in meta.get("extension") or [] if not (isinstance(e, dict)
                                                             and e.get("url") == FILENAME_EXTENSION_URL)]
    if filename:
        others.append({"url": FILENAME_EXTENSION_URL, "valueString": filename})
    if others:
        meta["extension"] = others
    else:
        meta.pop("extension", None)
    if meta:
        binary["meta"] = meta
    else:
        binary.pop("meta", None)


def security_context_of(binary: dict[str, Any]) -> str | None:
    """The reference string of `Binary.securityContext` (R4 Binary), or None when absent."""
    ref = binary.get("securityContext")
    if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
        return str(ref["reference"])
    return None


def is_reference_text(value: str) -> bool:
    """Whether `value` is a relative literal reference `Type/id` (and so a safe header value)."""
    return bool(_REFERENCE.match(value))


def check_reference(value: str, where: str) -> str:
    """`value` stripped, when it is a relative literal reference `Type/id` whose Type is an R4 resource
    type (R4 references.html#literal); ValueError naming `where` otherwise. Every way of giving a Binary
    its securityContext (X-Security-Context, tus Upload-Metadata, direct uploads) checks it here, before
    any byte is staged, so an unknown type cannot fail the write only at its end."""
    value = value.strip()
    if not _REFERENCE.match(value):
        raise ValueError(f"{where} '{value[:80]}' is not a reference like Patient/123")
    resource_type = value.split("/", 1)[0]
    if not is_resource_type(resource_type):
        raise ValueError(f"{where} '{value}' names '{resource_type}', which is not an R4 resource type")
    return value


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# RFC 9110 section 8.3.1: type "/" subtype *( OWS ";" OWS parameter ), printable ASCII only, so that
# the value can always be sent back as a Content-Type header.
_MEDIA_TYPE = re.compile(rf'^{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"(?:[ !#-\[\]-~]|\\[ -~])*"))*\Z')
MAX_CONTENT_TYPE_LENGTH = 255


def is_media_type(value: object) -> bool:
    """Whether `value` is a media type (`image/png`, `text/plain; charset=utf-8`) per RFC 9110."""
    return isinstance(value, str) and len(value) <= MAX_CONTENT_TYPE_LENGTH and bool(_MEDIA_TYPE.match(value))


def check_content_type(value: str, where: str) -> str:
    """`value` stripped, when it is a media type; ValueError naming `where` otherwise (control
    characters, non-ASCII, no subtype...): a stored type must be servable as a header again."""
    stripped = value.strip(" \t")
    if not is_media_type(stripped):
        raise ValueError(f"{where} {value[:80]!r} is not a media type like image/png or text/plain; charset=utf-8")
    return stripped


def base64_length(size: int) -> int:
    """Characters in the padded base64 text of `size` bytes."""
    return 4 * ((size + 2) // 3)
