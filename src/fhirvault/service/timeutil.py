"""Timestamps: microseconds since the epoch in the store, FHIR instants and HTTP dates at the edge."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from fhirvault.errors import Invalid
from fhirvault.fhir.dates import date_range


def to_instant(us: int) -> str:
    """A time in microseconds since the epoch as a FHIR instant (R4 2.24.0.1), in UTC with microseconds, e.g.
    2026-11-30T11:00:00.123456+00:00."""
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="microseconds")


def to_http_date(us: int) -> str:
    """A time in microseconds since the epoch as an HTTP date (RFC 9110 5.6.7, whole seconds), e.g. Mon, 30
    Nov 2026 11:00:00 GMT."""
    return format_datetime(datetime.fromtimestamp(us // 1_000_000, UTC), usegmt=True)


def parse_http_date(value: str) -> int | None:
    """An HTTP date (RFC 9110 5.6.7, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`) in microseconds; None when invalid."""
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp()) * 1_000_000


def parse_fhir_datetime_range(value: str) -> tuple[int, int]:
    """A FHIR date/dateTime/instant as the half-open range [start, end) in microseconds, by its precision.
    Raises Invalid for anything else."""
    try:
        return date_range(value)
    except ValueError as exc:
        raise Invalid(str(exc) if str(exc).startswith("'") else f"'{value}' is not a valid date: {exc}") from exc
