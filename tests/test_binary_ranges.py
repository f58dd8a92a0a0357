"""The pure range logic (http/ranges.py): examples from RFC 9110 and hypothesis properties."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from fhirvault.http import ranges
from fhirvault.http.disposition import content_disposition, filename_from
from fhirvault.http.ranges import ByteRange

ETAG = '"abc"'
DATE = "Tue, 24 Nov 2026 20:14:42 GMT"


def test_examples_from_rfc_9110() -> None:
    size = 10000
    assert ranges.parse_range("bytes=0-499", size) == [ByteRange(0, 500)]
    assert ranges.parse_range("bytes=500-999", size) == [ByteRange(500, 1000)]
    assert ranges.parse_range("bytes=-500", size) == [ByteRange(9500, 10000)]
    assert ranges.parse_range("bytes=9500-", size) == [ByteRange(9500, 10000)]
    assert ranges.parse_range("bytes=0-0,-1", size) == [ByteRange(0, 1), ByteRange(9999, 10000)]
    assert ranges.parse_range("bytes= 500-600 , 601-999", size) == [ByteRange(500, 601), ByteRange(601, 1000)]
    assert ranges.parse_range("bytes=0-99999", size) == [ByteRange(0, 10000)]  # clipped to the end
    assert ranges.parse_range("bytes=-20000", size) == [ByteRange(0, 10000)]


def test_invalid_headers_are_ignored_and_unsatisfiable_ones_are_empty() -> None:
    for header in ("bytes=5-2", "bytes=a-b", "items=0-1", "bytes=", "bytes=-", "0-1", "bytes=1-2-3"):
        assert ranges.parse_range(header, 100) is None, header
    assert ranges.parse_range("bytes=100-", 100) == []
    assert ranges.parse_range("bytes=-0", 100) == []
    assert ranges.parse_range("bytes=-5", 0) == []
    assert ranges.parse_range("bytes=0-0", 0) == []


def test_plan_statuses() -> None:
    assert ranges.plan(100, None, None, ETAG, DATE).status == 200
    assert ranges.plan(100, "bytes=0-9", None, ETAG, DATE) == ranges.RangePlan(206, (ByteRange(0, 10),))
    assert ranges.plan(100, "bytes=0-9,20-29", None, ETAG, DATE).status == 206
    assert ranges.plan(100, "bytes=200-300", None, ETAG, DATE).status == 416
    assert ranges.plan(100, "bytes=9-1", None, ETAG, DATE).status == 200
    assert ranges.plan(100, ",".join(["bytes=0-0"] + ["1-1"] * 100), None, ETAG, DATE).status == 200
    assert ranges.unsatisfied_range(100) == "bytes */100"


def test_if_range_compares_strongly() -> None:
    assert ranges.plan(100, "bytes=0-9", ETAG, ETAG, DATE).status == 206
    assert ranges.plan(100, "bytes=0-9", '"other"', ETAG, DATE).status == 200
    assert ranges.plan(100, "bytes=0-9", 'W/"abc"', ETAG, DATE).status == 200  # weak never matches
    assert ranges.plan(100, "bytes=0-9", DATE, ETAG, DATE).status == 206
    assert ranges.plan(100, "bytes=0-9", "Mon, 23 Nov 2026 20:14:42 GMT", ETAG, DATE).status == 200


def test_if_none_match_compares_weakly() -> None:
    assert ranges.none_match('"abc"', ETAG)
    assert ranges.none_match('W/"abc"', ETAG)
    assert ranges.none_match('"x", "abc"', ETAG)
    assert ranges.none_match("*", ETAG)
    assert not ranges.none_match('"x"', ETAG)
    assert not ranges.none_match(None, ETAG)


@st.composite
def range_specs(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["full", "open", "suffix"]))
    a = draw(st.integers(0, 300))
    b = draw(st.integers(0, 300))
    if kind == "full":
        return f"{min(a, b)}-{max(a, b)}"
    return f"{a}-" if kind == "open" else f"-{a}"


@given(size=st.integers(0, 250), specs=st.lists(range_specs(), min_size=1, max_size=6))
def test_property_every_range_is_non_empty_and_inside(size: int, specs: list[str]) -> None:
    parsed = ranges.parse_range("bytes=" + ",".join(specs), size)
    assert parsed is not None  # every generated spec is syntactically valid
    for r in parsed:
        assert 0 <= r.start < r.end <= size
    # a range is dropped only when unsatisfiable
    satisfiable = 0
    for spec in specs:
        first, last = spec.split("-")
        if first:
            satisfiable += int(first) < size
        else:
            satisfiable += int(last) > 0 and size > 0
    assert len(parsed) == satisfiable


@given(size=st.integers(1, 5000), start=st.integers(0, 6000), length=st.integers(1, 6000))
def test_property_single_range_selects_exactly_those_bytes(size: int, start: int, length: int) -> None:
    data = bytes(i % 251 for i in range(size))
    p = ranges.plan(size, f"bytes={start}-{start + length - 1}", None, ETAG, DATE)
    if start >= size:
        assert p.status == 416
        return
    assert p.status == 206 and len(p.ranges) == 1
    r = p.ranges[0]
    assert data[r.start:r.end] == data[start:start + length]
    first, last_total = r.content_range(size).removeprefix("bytes ").split("-")
    last, total = last_total.split("/")
    assert (int(first), int(last) + 1, int(total)) == (r.start, r.end, size)


@given(size=st.integers(1, 3000), bounds=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000)),
                                                   min_size=2, max_size=5))
def test_property_multipart_framing_round_trips(size: int, bounds: list[tuple[int, int]]) -> None:
    data = bytes((i * 7) % 256 for i in range(size))
    header = "bytes=" + ",".join(f"{min(a, b)}-{max(a, b)}" for a, b in bounds)
    p = ranges.plan(size, header, None, ETAG, DATE)
    if p.status != 206 or len(p.ranges) < 2:
        return
    boundary = "b0undary"
    body = b"".join(ranges.part_header(boundary, "image/png", r, size) + data[r.start:r.end] + ranges.PART_END
                    for r in p.ranges) + ranges.closing_delimiter(boundary)
    assert len(body) == ranges.multipart_length(boundary, "image/png", p.ranges, size)
    parsed = parse_multipart(body, boundary)
    assert parsed == [(r.content_range(size), data[r.start:r.end]) for r in p.ranges]


def parse_multipart(body: bytes, boundary: str) -> list[tuple[str, bytes]]:
    """A reader written from RFC 9110 section 14.6, independent of the writer."""
    parts = []
    delimiter = f"--{boundary}".encode()
    assert body.endswith(delimiter + b"--\r\n")
    for raw in body.split(delimiter)[1:-1]:
        head, _, rest = raw.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        match = re.search(rb"Content-Range: (bytes \d+-\d+/\d+)", head)
        assert match and rest.endswith(b"\r\n")
        parts.append((match.group(1).decode(), rest[:-2]))
    return parts


def test_content_disposition_both_ways() -> None:
    assert content_disposition("a.pdf") == 'attachment; filename="a.pdf"'
    assert content_disposition('we"ird.pdf') == 'attachment; filename="we\\"ird.pdf"'
    value = content_disposition("Röntgen bild.png")
    assert value == "attachment; filename=\"R_ntgen bild.png\"; filename*=UTF-8''R%C3%B6ntgen%20bild.png"
    assert filename_from(value) == "Röntgen bild.png"
    assert filename_from('attachment; filename="a b.pdf"') == "a b.pdf"
    assert filename_from("attachment; filename=plain.txt") == "plain.txt"
    assert filename_from('attachment; filename="../../etc/passwd"') == "passwd"
    assert filename_from("inline") is None


@given(st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and "/" not in s and "\\" not in s))
def test_property_disposition_round_trips_any_name(name: str) -> None:
    value = content_disposition(name)
    assert filename_from(value) == name.strip()
    assert all(32 <= ord(c) < 127 for c in value), "a header value must stay printable ASCII"
