"""FHIR date, dateTime and instant values as half-open ranges of microseconds, by their precision."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

_DATE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(\.(?P<f>\d{1,6})\d*)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# Open ends of a Period, in microseconds: far outside any date FHIR can express (years 0001-9999).
MIN_US = -(2**62)
MAX_US = 2**62


def _zone(tz: str | None) -> timezone:
    if tz in (None, "Z"):
        return UTC  # zone-less times are read as UTC (the spec leaves them to the server)
    assert tz is not None
    sign = 1 if tz[0] == "+" else -1
    hh, mm = tz[1:].split(":")
    return timezone(sign * timedelta(hours=int(hh), minutes=int(mm)))


def date_range(value: str) -> tuple[int, int]:
    """`value` (e.g. `2025`, `2025-03`, `2025-03-04T10:00Z`) as [start, end) in microseconds since the
    epoch, the width given by its precision (FHIR R4 3.1.1.4.2). Raises ValueError when it is not a
    FHIR date/dateTime/instant, or names a day outside years 1-9999 (month 13, or 9999-12-31 whose
    end or zone shift leaves the calendar)."""
    try:
        return _range(value)
    except OverflowError as exc:
        raise ValueError(f"'{value}' is outside the years 1-9999: {exc}") from None


def _range(value: str) -> tuple[int, int]:
    m = _DATE.match(value)
    if not m:
        raise ValueError(f"'{value}' is not a FHIR date or dateTime (expected e.g. 2024-05-01 or 2024-05-01T10:00:00Z)")
    g = m.groupdict()
    tz = _zone(g["tz"])
    year = int(g["y"])
    if g["m"] is None:
        start, end = datetime(year, 1, 1, tzinfo=tz), datetime(year + 1, 1, 1, tzinfo=tz)
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
    return (start - _EPOCH) // _US, (end - _EPOCH) // _US
