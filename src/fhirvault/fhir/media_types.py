"""FHIR's media types (R4 http.html#mime-type): which names mean FHIR JSON R4, `_format` aliases, the
`fhirVersion` and `charset` parameters. Pure knowledge, shared by the HTTP edge and Bundle entries."""

from __future__ import annotations

FHIR_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
FHIR_JSON = "application/fhir+json"
# `_format` values (R4 http.html#mime-type) and media types that name a FHIR format.
FORMAT_ALIASES = {"json": FHIR_JSON, "text/json": FHIR_JSON, "xml": "application/fhir+xml",
                  "text/xml": "application/fhir+xml", "application/xml": "application/fhir+xml",
                  "ttl": "application/fhir+turtle", "text/turtle": "application/fhir+turtle",
                  "application/x-turtle": "application/fhir+turtle", "html": "text/html"}
FHIR_ONLY_TYPES = ("application/fhir+xml", "application/xml+fhir", "application/fhir+turtle")
FHIR_VERSIONS = ("4.0", "4.0.1")  # the `fhirVersion` media type parameter values this server speaks
PRODUCED_FORMATS = "application/fhir+json (also as application/json, json), fhirVersion=4.0"


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type or Accept value, lower case and without parameters ("" when
    absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_fhir_json(content_type: str | None) -> bool:
    """Whether a Content-Type names FHIR JSON (application/fhir+json, application/json+fhir or
    application/json)."""
    return media_type(content_type) in FHIR_JSON_TYPES


def media_parameters(content_type: str | None) -> dict[str, str]:
    """The parameters of a media type, names in lower case: `; fhirVersion=4.0` -> {"fhirversion": "4.0"}."""
    out: dict[str, str] = {}
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key:
            out[key.strip().lower()] = value.strip().strip('"')
    return out


def speaks_fhir_version(content_type: str | None) -> bool:
    """False when the media type names a `fhirVersion` other than R4's 4.0 (R4 http.html#version-parameter)."""
    version = media_parameters(content_type).get("fhirversion")
    return version is None or version in FHIR_VERSIONS


def is_produced_format(value: str) -> bool:
    """True when a `_format` value or Accept media type (with parameters) names FHIR JSON R4.

    `_format=application/fhir json` (a `+` a client forgot to escape) counts as `application/fhir+json`.
    """
    name = media_type(value).replace(" ", "+")
    return FORMAT_ALIASES.get(name, name) in FHIR_JSON_TYPES and speaks_fhir_version(value)


def charset_is_utf8(content_type: str | None) -> bool:
    """False when the media type names a `charset` other than UTF-8: FHIR JSON is UTF-8 (R4
    http.html#mime-type, RFC 8259 8.1), so a body declared in another charset is not FHIR JSON."""
    charset = media_parameters(content_type).get("charset")
    return charset is None or charset.lower() in ("utf-8", "utf8")
