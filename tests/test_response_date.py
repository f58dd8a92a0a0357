"""Every answer's Date is taken when the answer starts, so an answer never says it was modified after it
was sent (RFC 9110 8.8.2.1: Last-Modified is not later than Date)."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

from tests.support.server import FhirApi


def test_last_modified_is_never_later_than_date(api: FhirApi) -> None:
    seen = 0
    deadline = time.monotonic() + 4  # writes across several second boundaries
    while time.monotonic() < deadline or seen < 20:
        r = api.post("/Patient", json={"resourceType": "Patient"})
        assert r.status_code == 201, r.text
        assert len(r.headers.get_list("date")) == 1
        date, modified = parsedate_to_datetime(r.headers["date"]), parsedate_to_datetime(r.headers["last-modified"])
        assert modified <= date, (r.headers["last-modified"], r.headers["date"])
        seen += 1
    assert len(api.get("/metadata").headers.get_list("date")) == 1
