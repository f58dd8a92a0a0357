"""The server's clock: time as microseconds since the Unix epoch, the unit of every stored timestamp."""

from __future__ import annotations

import time


def now_us() -> int:
    """Microseconds since 1970-01-01T00:00:00Z (int), from the wall clock."""
    return time.time_ns() // 1000
