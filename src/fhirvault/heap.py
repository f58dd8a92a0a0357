"""The garbage collector's view of a serving process: what was built to serve is kept out of its scans."""

from __future__ import annotations

import gc

# The youngest generation is collected after this many allocations (CPython's default: 700). A search page of
# 100 resources allocates tens of thousands of objects that live for the request; at 700 the collector ran
# several times per page, scanning the same page objects each time and pushing them into older generations.
YOUNG_THRESHOLD = 50_000


def settle_heap() -> None:
    """Called once the process is ready to serve: freezes every object alive (the R4 tables, the SQL
    statements, the application) into the permanent generation, so that the full collections that
    requests still trigger scan only what requests made, not millions of start-up objects (each such scan
    took a quarter of a second). No collection runs first: a full one holds the interpreter for as long as
    such a scan, and a worker that does not answer its supervisor's ping in time is restarted; the little
    garbage start-up leaves is frozen with the rest. Also raises the youngest generation's threshold
    (YOUNG_THRESHOLD). Frozen objects are never freed, by design: they live as long as the process."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
