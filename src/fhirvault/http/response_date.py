"""The `Date` header of every answer, taken when the answer starts rather than up to a second earlier.

uvicorn renews its `Date` value once a second on a timer, so an answer to a write could carry a
`Last-Modified` (the new version's `meta.lastUpdated`) later than its own `Date`, which RFC 9110
8.8.2.1 forbids ("MUST NOT generate a Last-Modified date that is later than ... Date") and which makes
caches misjudge freshness. `ResponseDate` stands in for the server's default header list of one request
(`connection_limits.LimitedHttpProtocol` installs it); uvicorn prepends that list to the answer's own
headers when the answer starts, and at that moment the date is the current second.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

_DATE = b"date"
_cached: tuple[int, bytes] = (0, b"")


def http_date_now() -> bytes:
    """The current time as an IMF-fixdate (RFC 9110 5.6.7), e.g. b"Mon, 30 Nov 2026 15:04:05 GMT";
    formatted once per second."""
    global _cached
    second = int(time.time())
    if _cached[0] != second:
        _cached = (second, formatdate(second, usegmt=True).encode("ascii"))
    return _cached[1]


class ResponseDate(list[tuple[bytes, bytes]]):
    """The server's default headers of one request, whose `date` is replaced by the current second's when
    they are joined to the answer's headers (`default + answer`, as uvicorn does at the answer's start)."""

    def __add__(self, other: Any) -> list[tuple[bytes, bytes]]:  # type: ignore[override]
        """The default headers, with a fresh date, followed by `other`."""
        fresh = [(_DATE, http_date_now()) if name == _DATE else (name, value) for name, value in self]
        return fresh + list(other)
