"""Media types: what the client sent, what it accepts (with q-values), `_format`, Vary, and the Prefer header."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import MutableHeaders

from fhirvault.errors import NotAcceptable
from fhirvault.fhir.media_types import (
    FHIR_JSON,
    FHIR_JSON_TYPES,
    FHIR_ONLY_TYPES,
    FHIR_VERSIONS,
    FORMAT_ALIASES,
    PRODUCED_FORMATS,
    charset_is_utf8,
    is_fhir_json,
    is_produced_format,
    media_parameters,
    media_type,
    speaks_fhir_version,
)

# Re-exported: what the HTTP edge has always imported from here.
__all__ = ["FHIR_JSON", "FHIR_JSON_TYPES", "FHIR_ONLY_TYPES", "FHIR_VERSIONS", "FORMAT_ALIASES", "PRODUCED_FORMATS",
           "charset_is_utf8", "is_fhir_json", "is_produced_format", "media_parameters", "media_type",
           "speaks_fhir_version"]


def accepts_fhir_json(header: str | None) -> bool:
    """True when an Accept header admits FHIR JSON R4: a FHIR JSON type, `*/*`, `application/*` (q > 0)."""
    if header is None or not header.strip():
        return True
    for item in parse_accept(header):
        if item.media_type in ("*/*", "application/*") or is_produced_format(item.media_type + item.parameters):
            return True
    return False


def names_other_fhir_format(header: str | None) -> bool:
    """True when Accept asks for a FHIR representation this server does not produce: FHIR XML or
    Turtle, or a FHIR JSON of another `fhirVersion`."""
    for item in parse_accept(header):
        if item.media_type in FHIR_ONLY_TYPES:
            return True
        if item.media_type in FHIR_JSON_TYPES and not speaks_fhir_version(item.media_type + item.parameters):
            return True
    return False


@dataclass(frozen=True)
class AcceptItem:
    """One Accept entry (RFC 9110 12.5.1): its media type, quality 0..1 and position in the header."""

    media_type: str
    q: float
    order: int
    parameters: str = ""  # the media type's own parameters other than q, as `;name=value` text


def parse_accept(header: str | None) -> list[AcceptItem]:
    """Accept entries, most preferred first (by q, then by specificity, then by position)."""
    items: list[AcceptItem] = []
    for order, part in enumerate((header or "").split(",")):
        fields = [f.strip() for f in part.split(";")]
        if not fields[0]:
            continue
        q = 1.0
        params = ""
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
            elif f:
                params += ";" + f
        items.append(AcceptItem(fields[0].lower(), q, order, params))

    def specificity(item: AcceptItem) -> int:
        return 0 if item.media_type == "*/*" else 1 if item.media_type.endswith("/*") else 2

    return sorted((i for i in items if i.q > 0), key=lambda i: (-i.q, -specificity(i), i.order))


def accepts_gzip(header: str | None) -> bool:
    """Whether `Accept-Encoding` admits gzip (RFC 9110 12.5.3): `gzip` (or `x-gzip`) listed with a q above
    0, or `*` above 0 with gzip not refused by name. No header: False (send the identity coding)."""
    named: float | None = None
    star: float | None = None
    for part in (header or "").split(","):
        coding, *params = (f.strip() for f in part.split(";"))
        q = 1.0
        for param in params:
            if param.lower().startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            named = q if named is None else max(named, q)
        elif coding == "*":
            star = q
    if named is not None:
        return named > 0
    return star is not None and star > 0


def prefers_fhir_json(header: str | None) -> bool:
    """True when the client's most preferred type is a FHIR JSON type."""
    items = parse_accept(header)
    return bool(items) and items[0].media_type in FHIR_JSON_TYPES


def check_format(value: str) -> None:
    """Accepts a `_format` value naming FHIR JSON (`json`, `application/fhir+json`, `application/json`,
    parameters such as `;charset=utf-8` allowed, `fhirVersion=4.0` only); raises NotAcceptable (406) for
    any other format, XML and Turtle included, which this server does not produce (R4 http.html#mime-type)."""
    if not is_produced_format(value):
        raise NotAcceptable(f"_format={value!r} is not supported: this server answers FHIR JSON only "
                            "(_format=json or application/fhir+json)", expression="_format")


def binary_wants_resource(format_param: str | None, accept: str | None) -> bool:
    """Whether a Binary read answers the Binary resource (True) or its raw bytes (False), in this order
    (R4 binary.html#rest, http.html#mime-type): `_format` given -> the resource (`_format` overrides
    Accept; a non-JSON one is NotAcceptable); an Accept whose preferred type is a FHIR JSON type -> the
    resource, even when the Binary's own contentType is that type; anything else (the stored type,
    `*/*`, no Accept) -> the bytes."""
    if format_param is not None:
        check_format(format_param)
        return True
    return prefers_fhir_json(accept)


def add_vary(headers: MutableHeaders | dict[str, str], *names: str) -> None:
    """Adds request header names to `Vary` (RFC 9110 12.5.5), keeping those already listed, so that caches
    never hand one representation to a request that would have been given another."""
    present = [v.strip() for v in headers.get("Vary", "").split(",") if v.strip()]
    lowered = {v.lower() for v in present}
    present += [n for n in names if n.lower() not in lowered]
    if present:
        headers["Vary"] = ", ".join(present)


def parse_prefer(header: str | None) -> dict[str, str]:
    """The Prefer header's preferences (RFC 7240) as lower-case name -> lower-case value ("" for a bare
    token), e.g. {"return": "minimal", "handling": "strict"}."""
    out: dict[str, str] = {}
    for part in (header or "").split(","):
        for token in part.split(";"):
            key, _, value = token.strip().partition("=")
            if key:
                out[key.strip().lower()] = value.strip().strip('"').lower()
    return out
