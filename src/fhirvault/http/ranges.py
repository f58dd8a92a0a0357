"""Range requests per RFC 9110, as pure functions: parse `Range`, judge `If-Range`, choose 200/206/416,
and frame multipart/byteranges bodies. No I/O here; every place that serves bytes uses this."""

from __future__ import annotations

import re
from dataclasses import dataclass

# More ranges than this in one request are served as the whole representation (RFC 9110 allows
# ignoring Range; many tiny ranges are a known denial-of-service pattern).
MAX_RANGES = 64

# ASCII digits, at most 18 (a position in any file; longer is not a valid range but a probe).
_SPEC = re.compile(r"^([0-9]{0,18})-([0-9]{0,18})\Z")


@dataclass(frozen=True)
class ByteRange:
    """Bytes [start, end) of the representation (end exclusive)."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """The number of bytes in the range."""
        return self.end - self.start

    def content_range(self, size: int) -> str:
        """The Content-Range value for this range of a representation of `size` bytes (RFC 9110 14.4), e.g.
        "bytes 0-99/1000"."""
        return f"bytes {self.start}-{self.end - 1}/{size}"


@dataclass(frozen=True)
class RangePlan:
    """What to answer: 200 (whole), 206 (the `ranges`, one or several) or 416 (none satisfiable)."""

    status: int
    ranges: tuple[ByteRange, ...] = ()


def parse_range(header: str, size: int) -> list[ByteRange] | None:
    """The satisfiable ranges of a `Range` header for a representation of `size` bytes, in request order.
    None when the header is not a valid bytes range set (RFC 9110: then it is ignored); [] when it is
    valid but no range is satisfiable."""
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges: list[ByteRange] = []
    parts = [p.strip() for p in spec.split(",")]
    if not any(parts):
        return None
    for part in parts:
        if not part:
            continue  # empty list elements are allowed by the list syntax
        m = _SPEC.match(part)
        if not m:
            return None
        first, last = m.group(1), m.group(2)
        if first:
            start = int(first)
            if last and int(last) < start:
                return None
            if start >= size:
                continue
            end = size if not last else min(int(last) + 1, size)
            ranges.append(ByteRange(start, end))
        elif last:
            suffix = int(last)
            if suffix == 0 or size == 0:
                continue
            ranges.append(ByteRange(max(0, size - suffix), size))
        else:
            return None
    return ranges


def if_range_matches(if_range: str | None, etag: str, last_modified: str) -> bool:
    """True when the `If-Range` validator still holds (or is absent). Entity tags compare strongly, so a
    weak tag never matches; a date must equal Last-Modified exactly."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith("W/"):
        return False
    if value.startswith('"'):
        return value == etag and not etag.startswith("W/")
    return value == last_modified


def none_match(if_none_match: str | None, etag: str) -> bool:
    """True when `If-None-Match` matches the current entity tag (weak comparison), i.e. answer 304."""
    if if_none_match is None:
        return False
    value = if_none_match.strip()
    if value == "*":
        return True
    opaque = etag[2:] if etag.startswith("W/") else etag
    for candidate in value.split(","):
        tag = candidate.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag and tag == opaque:
            return True
    return False


def coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    """The ranges sorted by start, overlapping and adjacent ones merged (RFC 9110 section 14.2 lets a
    server coalesce them), so no byte is sent twice."""
    merged: list[ByteRange] = []
    for r in sorted(ranges, key=lambda r: r.start):
        if merged and r.start <= merged[-1].end:
            if r.end > merged[-1].end:
                merged[-1] = ByteRange(merged[-1].start, r.end)
        else:
            merged.append(r)
    return merged


def plan(size: int, range_header: str | None, if_range: str | None, etag: str, last_modified: str) -> RangePlan:
    """The response to a GET for `size` bytes with these request headers.

    Many ranges, or ranges that together ask for more bytes than the representation has (a known
    amplification pattern: `bytes=0-,0-,...`), get the whole representation once (200); the rest are
    coalesced, so a 206 never carries more bytes than the file plus the multipart framing."""
    if range_header is None or not if_range_matches(if_range, etag, last_modified):
        return RangePlan(200)
    ranges = parse_range(range_header, size)
    if ranges is None or len(ranges) > MAX_RANGES:
        return RangePlan(200)
    if not ranges:
        return RangePlan(416)
    if sum(r.length for r in ranges) > size:
        return RangePlan(200)
    return RangePlan(206, tuple(coalesce(ranges)))


def unsatisfied_range(size: int) -> str:
    """The Content-Range of a 416 answer."""
    return f"bytes */{size}"


def part_header(boundary: str, content_type: str, r: ByteRange, size: int) -> bytes:
    """The delimiter and headers before one part of a multipart/byteranges body."""
    return (f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Range: {r.content_range(size)}\r\n\r\n").encode("latin-1")


PART_END = b"\r\n"


def closing_delimiter(boundary: str) -> bytes:
    """The line that ends a multipart/byteranges body (RFC 2046 5.1.1)."""
    return f"--{boundary}--\r\n".encode("latin-1")


def multipart_length(boundary: str, content_type: str, ranges: tuple[ByteRange, ...], size: int) -> int:
    """Exact Content-Length of the multipart/byteranges body for these ranges."""
    total = len(closing_delimiter(boundary))
    for r in ranges:
        total += len(part_header(boundary, content_type, r, size)) + r.length + len(PART_END)
    return total
