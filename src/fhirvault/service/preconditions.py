"""Preconditions of a write: If-Match, If-None-Match and If-Unmodified-Since (RFC 9110 13.1;
R4 http.html#concurrency), the same for HTTP headers and for batch/transaction `request.ifMatch`,
`request.ifNoneMatch`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fhirvault.errors import Invalid, PreconditionFailed
from fhirvault.fhir.r4 import whole_number
from fhirvault.service.timeutil import parse_http_date
from fhirvault.store.resources import StoredResource


def parse_etag(value: str, header: str = "If-Match") -> int:
    """The version an entity tag names: `W/"3"` (FHIR's weak ETag) or `"3"` -> 3. Invalid (400) for
    anything else, naming `header`."""
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    version = whole_number(v.strip('"')) if len(v) >= 2 and v[0] == v[-1] == '"' else whole_number(v)
    if version is None:
        raise Invalid(f"{header} '{value}' is not a version ETag like W/\"3\"", expression=header)
    return version


def _etag_list(value: str, header: str) -> frozenset[int] | None:
    """The versions of an `If-Match` / `If-None-Match` value; None for `*` (any current version)."""
    value = value.strip()
    if not value:
        raise Invalid(f"{header} is empty; give an ETag like W/\"3\" or *", expression=header)
    if value == "*":
        return None
    return frozenset(parse_etag(tag, header) for tag in value.split(",") if tag.strip())


@dataclass(frozen=True)
class Precondition:
    """What a write requires of the resource's current version; checked inside the write's transaction.

    `if_match`: the current version must be one of these (`*`: it must exist); `if_none_match`: it must be
    none of these (`*`: it must not exist, i.e. create only); each None when not asked, `ANY` for `*`.
    `unmodified_since_us`: the current version must be no newer (HTTP-date precision, seconds), ignored
    when `if_match` is given (RFC 9110 13.1.4). A deleted resource has no current version.
    """

    if_match: frozenset[int] | None = None
    if_match_any: bool = False
    if_none_match: frozenset[int] | None = None
    if_none_match_any: bool = False
    unmodified_since_us: int | None = None

    @classmethod
    def parse(cls, if_match: str | None, if_none_match: str | None = None,
              if_unmodified_since: str | None = None) -> Precondition | None:
        """The precondition of these header (or Bundle `request.ifMatch`/`ifNoneMatch`) values; None when
        none is given. Raises Invalid for a value that is not `*` or a list of version ETags."""
        out = cls()
        if if_match is not None:
            versions = _etag_list(if_match, "If-Match")
            out = cls(if_match=versions or frozenset(), if_match_any=versions is None)
        if if_none_match is not None:
            versions = _etag_list(if_none_match, "If-None-Match")
            out = cls(out.if_match, out.if_match_any, versions or frozenset(), versions is None)
        if if_unmodified_since is not None and if_match is None:
            # RFC 9110 13.1.4: a value that is not an HTTP-date is ignored.
            since = parse_http_date(if_unmodified_since)
            out = cls(out.if_match, out.if_match_any, out.if_none_match, out.if_none_match_any, since)
        return None if out == cls() else out

    @classmethod
    def version(cls, version_id: int) -> Precondition:
        """`If-Match: W/"version_id"`."""
        return cls(if_match=frozenset({version_id}))

    def check(self, rtype: str, rid: str, current: StoredResource | None) -> None:
        """PreconditionFailed (412) unless `current` (None or deleted: the resource does not exist)
        satisfies every condition."""
        exists = current is not None and not current.deleted
        version = current.version_id if current is not None and exists else None
        ref = f"{rtype}/{rid}"
        if self.if_match is not None:
            if not exists:
                raise PreconditionFailed(f"If-Match {self._shown(self.if_match, self.if_match_any)} given but "
                                         f"{ref} does not exist")
            if not self.if_match_any and version not in self.if_match:
                raise PreconditionFailed(f"If-Match {self._shown(self.if_match, False)} does not match the "
                                         f"current version {version} of {ref}")
        if self.if_none_match is not None and exists:
            if self.if_none_match_any:
                raise PreconditionFailed(f"If-None-Match * given but {ref} exists (version {version}); "
                                         "the request only creates")
            if version in self.if_none_match:
                raise PreconditionFailed(f"If-None-Match {self._shown(self.if_none_match, False)} matches the "
                                         f"current version {version} of {ref}")
        since = self.unmodified_since_us
        modified_s = current.last_updated // 1_000_000 if current is not None and exists else None
        if since is not None and modified_s is not None and modified_s > since // 1_000_000:
            raise PreconditionFailed(f"{ref} was modified after the If-Unmodified-Since date")

    @property
    def asks_existing(self) -> bool:
        """True when the request only makes sense on an existing resource (If-Match, If-None-Match with
        versions, If-Unmodified-Since); a create (POST) has no such thing to compare with."""
        return self.if_match is not None or bool(self.if_none_match) or self.unmodified_since_us is not None

    @staticmethod
    def _shown(versions: frozenset[int], any_version: bool) -> str:
        return "*" if any_version else ", ".join(f'W/"{v}"' for v in sorted(versions))


def as_precondition(value: Precondition | int | None) -> Precondition | None:
    """A precondition from what write use cases take: a Precondition, a version number (If-Match on
    that version) or None."""
    return Precondition.version(value) if isinstance(value, int) else value


def not_modified(current: StoredResource, if_none_match: str | None, if_modified_since: str | None) -> bool:
    """Whether a conditional read answers 304 (R4 http.html#cread, RFC 9110 13.1.2-3): If-None-Match
    (weak comparison: `W/"3"` and `"3"` both name version 3; `*` any) when given, else If-Modified-Since
    (an HTTP-date, or a FHIR instant as in Bundles; an invalid date is ignored). The same for headers and
    for Bundle `request.ifNoneMatch` / `request.ifModifiedSince`."""
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or f'"{current.version_id}"' in tags
    return unmodified_since(current.last_updated, if_modified_since)


def unmodified_since(last_updated_us: int, if_modified_since: str | None) -> bool:
    """Whether If-Modified-Since (an HTTP-date, or a FHIR instant as in Bundles) is at or after
    `last_updated_us` (microseconds since the epoch), compared in whole seconds as Last-Modified gives them
    (RFC 9110 13.1.3); False when the header is absent or not a date (then it is ignored)."""
    if if_modified_since is None:
        return False
    since_us = parse_http_date(if_modified_since)
    if since_us is None:  # a Bundle's request.ifModifiedSince is an instant
        try:
            since_us = int(datetime.fromisoformat(if_modified_since.strip()).timestamp()) * 1_000_000
        except ValueError:
            since_us = None
    return since_us is not None and last_updated_us // 1_000_000 * 1_000_000 <= since_us
