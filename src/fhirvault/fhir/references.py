"""Parsing of FHIR references (`Patient/1`, `Patient/1/_history/2`, absolute URLs on our base)."""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

from fhirvault.fhir.r4 import ID

_REL = re.compile(rf"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>{ID})(/_history/(?P<vid>[0-9]{{1,18}}))?\Z")


class Reference(NamedTuple):
    """A literal reference to a resource on this server: type, id and, for a versioned reference, the version
    id. A named tuple, so that hashing one (references key many look-ups on the read path) runs no Python
    code."""

    resource_type: str
    id: str
    version_id: str | None = None

    @property
    def relative(self) -> str:
        """"Type/id", without any version."""
        return f"{self.resource_type}/{self.id}"


def parse_reference(value: str, base_url: str | None = None) -> Reference | None:
    """A relative reference, or an absolute one on `base_url`; None for anything else."""
    if base_url and value.startswith(base_url.rstrip("/") + "/"):
        value = value[len(base_url.rstrip("/")) + 1 :]
    m = _REL.match(value)
    if not m:
        return None
    return Reference(m.group("type"), m.group("id"), m.group("vid"))


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _escape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0).upper()


def _without_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4: `/a/./b/../c` -> `/a/c`."""
    out: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/".join(out)


def normalized_url(url: str) -> str:
    """An absolute http(s) URL in the form RFC 3986 section 6.2.2 and 6.2.3 make equivalent spellings
    share: scheme and host in lower case, no default port, percent-escapes of unreserved characters
    decoded (others in upper case) and no dot segments in the path; query and fragment as given.
    `HTTP://Example.org:80/fhir/./R4/%42inary/1` -> `http://example.org/fhir/R4/Binary/1`. Any other
    string (relative, another scheme, with userinfo, a malformed port) comes back unchanged."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return url
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _without_dot_segments(_ESCAPE.sub(_escape, parts.path)) or "/"
    return urlunsplit((scheme, netloc, path, parts.query, parts.fragment))
