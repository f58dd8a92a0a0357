"""Content-Disposition (RFC 6266): reading a file name from a request, writing one into a response."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from fhirvault.http.requests import header_as_utf8

_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


def filename_from(header: str | None) -> str | None:
    """The file name of a `Content-Disposition` header; `filename*` (RFC 8187) wins over `filename`."""
    if not header:
        return None
    params: dict[str, str] = {}
    for name, value in _PARAM.findall(header):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params.setdefault(name.lower(), value)
    extended = params.get("filename*")
    if extended:
        charset, _, rest = extended.partition("'")
        _, _, encoded = rest.partition("'")
        if charset.lower() in ("utf-8", "iso-8859-1") and encoded:
            try:
                name = unquote(encoded, encoding=charset.lower(), errors="strict")
            except UnicodeDecodeError:
                name = ""
            if name:
                return _basename(name)
    plain = params.get("filename")
    # raw UTF-8 (curl, browsers) is UTF-8; other bytes stay Latin-1, as RFC 6266 reads them (it was stored
    # as `Befund MÃ¼ller.pdf`)
    return _basename(header_as_utf8(plain) or plain) if plain else None


def safe_filename(name: str | None) -> str | None:
    """Only the last path component of a client-given file name, or None when nothing is left."""
    return _basename(name) if name else None


def _basename(name: str) -> str | None:
    # Never keep a path: only the last component is a file name.
    base = re.split(r"[\\/]", name)[-1].strip()
    return base or None


def content_disposition(filename: str | None, disposition: str = "attachment") -> str:
    """A `Content-Disposition` value; non-ASCII names get an ASCII fallback plus `filename*=UTF-8''...`."""
    if not filename:
        return disposition
    # Only printable ASCII in the plain parameter: control characters could split the header.
    ascii_name = "".join(c if 32 <= ord(c) < 127 else "_" for c in filename)
    fallback = ascii_name.replace("\\", "\\\\").replace('"', '\\"')
    if ascii_name == filename:
        return f'{disposition}; filename="{fallback}"'
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
