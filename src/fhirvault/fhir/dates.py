"""FHIR date, dateTime and instant values as half-open ranges of microseconds, by their precision."""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, timedelta, timezone

_DATE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(\.(?P<f>\d{1,6})\d*)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_US = timedelta(microseconds=1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY_US = 86_400_000_000
# Open ends of a Period, in microseconds: far outside any date FHIR can express (years 0001-9999).
MIN_US = -(2**62)
MAX_US = 2**62


def _zone(tz: str | None) -> timezone:
    if tz in (None, "Z"):
        return UTC  # zone-less times are read as UTC (the spec leaves them to the server)
    assert tz is not None
    sign = 1 if tz[0] == "+" else -1
    hh, mm = (int(part) for part in tz[1:].split(":"))
    if mm > 59 or hh > 14 or hh == 14 and mm:
        # R4 datatypes.html#dateTime: offsets run from -14:00 to +14:00, as a written value's regex says
        raise ValueError(f"'{tz}' is no time zone offset (from -14:00 to +14:00)")
    return timezone(sign * timedelta(hours=hh, minutes=mm))


def date_range(value: str) -> tuple[int, int]:
    """`value` (e.g. `2025`, `2025-03`, `2025-03-04T10:00Z`) as [start, end) in microseconds since the
    epoch, the width given by its precision (FHIR R4 3.1.1.4.2). Raises ValueError when it is not a
    FHIR date/dateTime/instant, or names no day of the calendar (month 13, February 30, year 0).

    The microseconds are counted from the day's ordinal rather than through a datetime, whose calendar
    ends with 9999-12-31: the end of `9999`, `9999-12` or `9999-12-31` (the first instant of year 10000)
    and a late time whose zone puts it into year 10000 in UTC are valid all the same."""
    m = _DATE.match(value)
    if not m:
        raise ValueError(f"'{value}' is not a FHIR date or dateTime (expected e.g. 2024-05-01 or 2024-05-01T10:00:00Z)")
    g = m.groupdict()
    offset_us = (_zone(g["tz"]).utcoffset(None) or timedelta(0)) // _US
    year = int(g["y"])
    if g["m"] is None:
        first, days = date(year, 1, 1), 366 if calendar.isleap(year) else 365
    elif g["d"] is None:
        month = int(g["m"])
        first, days = date(year, month, 1), calendar.monthrange(year, month)[1]
    else:
        first, days = date(year, int(g["m"]), int(g["d"])), 1
    start = (first.toordinal() - _EPOCH_ORDINAL) * _DAY_US - offset_us
    if g["H"] is None:
        return start, start + days * _DAY_US
    hour, minute = int(g["H"]), int(g["M"])
    second = int(g["S"]) if g["S"] is not None else 0
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"'{value}' names no time of day")
    start += ((hour * 60 + minute) * 60 + second) * 1_000_000
    if g["S"] is None:
        return start, start + 60_000_000
    digits = g["f"]
    if digits is None:
        return start, start + 1_000_000
    start += int(digits.ljust(6, "0"))
    return start, start + 10 ** (6 - len(digits))
