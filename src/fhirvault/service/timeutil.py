"""Timestamps: microseconds since the epoch in the store, FHIR instants and HTTP dates at the edge."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

from fhirvault.errors import Invalid

_DATE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(\.(?P<f>\d{1,6})\d*)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def to_instant(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="microseconds")


def to_http_date(us: int) -> str:
    return format_datetime(datetime.fromtimestamp(us // 1_000_000, UTC), usegmt=True)


def parse_fhir_datetime_range(value: str) -> tuple[int, int]:
    """A FHIR date/dateTime/instant as the half-open range [start, end) in microseconds, by its precision."""
    m = _DATE.match(value)
    if not m:
        raise Invalid(f"'{value}' is not a FHIR date or dateTime (expected e.g. 2024-05-01 or 2024-05-01T10:00:00Z)")
    g = m.groupdict()
    if g["H"] is not None and g["tz"] is None:
        tz = UTC  # the spec leaves zone-less times to the server; we read them as UTC
    elif g["tz"] in (None, "Z"):
        tz = UTC
    else:
        sign = 1 if g["tz"][0] == "+" else -1
        hh, mm = g["tz"][1:].split(":")
        tz = timezone(sign * timedelta(hours=int(hh), minutes=int(mm)))
    try:
        year = int(g["y"])
        if g["m"] is None:
            start = datetime(year, 1, 1, tzinfo=tz)
            end = datetime(year + 1, 1, 1, tzinfo=tz)
        elif g["d"] is None:
            month = int(g["m"])
            start = datetime(year, month, 1, tzinfo=tz)
            end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=tz)
        else:
            day = datetime(year, int(g["m"]), int(g["d"]), tzinfo=tz)
            if g["H"] is None:
                start, end = day, day + timedelta(days=1)
            else:
                start = day.replace(hour=int(g["H"]), minute=int(g["M"]))
                if g["S"] is None:
                    end = start + timedelta(minutes=1)
                else:
                    start = start.replace(second=int(g["S"]))
                    if g["f"] is None:
                        end = start + timedelta(seconds=1)
                    else:
                        digits = g["f"]
                        start = start.replace(microsecond=int(digits.ljust(6, "0")))
                        end = start + timedelta(microseconds=10 ** (6 - len(digits)))
    except (ValueError, OverflowError) as exc:  # month 13, or a year past 9999 once the zone is applied
        raise Invalid(f"'{value}' is not a valid date: {exc}") from None
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    one = timedelta(microseconds=1)
    return (start - epoch) // one, (end - epoch) // one
