"""Media types: what the client sent, what it accepts (with q-values), and the Prefer header."""

from __future__ import annotations

from dataclasses import dataclass

FHIR_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
FHIR_JSON = "application/fhir+json"


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_fhir_json(content_type: str | None) -> bool:
    return media_type(content_type) in FHIR_JSON_TYPES


@dataclass(frozen=True)
class AcceptItem:
    media_type: str
    q: float
    order: int


def parse_accept(header: str | None) -> list[AcceptItem]:
    """Accept entries, most preferred first (by q, then by specificity, then by position)."""
    items: list[AcceptItem] = []
    for order, part in enumerate((header or "").split(",")):
        fields = [f.strip() for f in part.split(";")]
        if not fields[0]:
            continue
        q = 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        items.append(AcceptItem(fields[0].lower(), q, order))

    def specificity(item: AcceptItem) -> int:
        return 0 if item.media_type == "*/*" else 1 if item.media_type.endswith("/*") else 2

    return sorted((i for i in items if i.q > 0), key=lambda i: (-i.q, -specificity(i), i.order))


def prefers_fhir_json(header: str | None) -> bool:
    """True when the client's most preferred type is a FHIR JSON type."""
    items = parse_accept(header)
    return bool(items) and items[0].media_type in FHIR_JSON_TYPES


def parse_prefer(header: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (header or "").split(","):
        for token in part.split(";"):
            key, _, value = token.strip().partition("=")
            if key:
                out[key.strip().lower()] = value.strip().strip('"').lower()
    return out
