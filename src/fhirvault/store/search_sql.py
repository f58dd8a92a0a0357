"""Search criteria as SQL (SQLAlchemy Core, one code path for SQLite and PostgreSQL).

The service turns query parameters into the criteria classes below; this module turns criteria into
WHERE clauses over the `resources` table and its index tables (store/search_tables.py). Semantics
follow FHIR R4 3.1.1.4 (prefixes on ranges, string and token matching); the service has already
checked every name, modifier and value."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from fhirvault.fhir.search_storage import StoredAs, stored_as
from fhirvault.store.scan_rows import scan_state_matches
from fhirvault.store.schema import resources, search_refs, search_tokens
from fhirvault.store.search_tables import (
    as_stored,
    search_composite_parts,
    search_composites,
    search_dates,
    search_numbers,
    search_quantities,
    search_strings,
    search_uris,
)
from fhirvault.store.version_access import version_access

TABLES: dict[str, sa.Table] = {
    "string": search_strings, "token": search_tokens, "reference": search_refs, "date": search_dates,
    "number": search_numbers, "quantity": search_quantities, "uri": search_uris, "composite": search_composites,
    "composite-parts": search_composite_parts,
}
COMPARTMENT = "_compartment"
SECURITY_CONTEXT = "_securityContext"


# -- criteria -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StringTest:
    """One string search value (R4 search 3.1.1.5.3): starts-with by default, `:exact`, `:contains`, and
    `_filter`'s eq and ew."""

    mode: str  # start | exact | contains | equal | end (equal and end: _filter's eq and ew)
    value: str  # normalized but for exact


@dataclass(frozen=True)
class TokenTest:
    """One token search value (R4 search 3.1.1.5.6): `system|code`, `|code` (system ""), `system|` (code
    None), or a bare code (system None)."""

    system: str | None  # None: any system; "": no system
    code: str | None  # None: any code


@dataclass(frozen=True)
class RangeTest:
    """A prefixed number, date or quantity: [low, high) is the search value's range by its precision,
    `value` the value itself; `system`/`code` narrow a quantity."""

    prefix: str
    low: float
    high: float
    value: float
    system: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class UriTest:
    """One uri search value (R4 search 3.1.1.5.8): equal, `:below` (a prefix of the stored uri) or `:above`."""

    mode: str  # eq | below | above
    value: str


@dataclass(frozen=True)
class RefTest:
    """One reference search value (R4 search 3.1.1.5.10): the targets it may name (`Type/id` for each possible
    type, or the literal text of a logical or absolute reference)."""

    targets: tuple[str, ...]  # `Type/id` or a literal reference text


@dataclass(frozen=True)
class CompositeTest:
    """One `$`-joined composite value: a test per component, each of the component's type (`kinds`).
    Two-component composites are searched in `search_composites` (the first part a token or reference),
    longer ones in `search_composite_parts`."""

    parts: tuple[Test, ...]
    kinds: tuple[str, ...]


@dataclass(frozen=True)
class CodeSetTest:
    """A token in one of `codes` of `system` (a value set expanded, or a code and its subsumed or
    subsuming codes): the resolved form of a TermTest. `system` "": codes stored without a system (`code`
    elements, whose system their binding implies)."""

    system: str
    codes: tuple[str, ...]


@dataclass(frozen=True)
class TermTest:
    """Token `:in` / `:not-in` (`value` names a ValueSet) or `:below` / `:above` (`value` is
    `system|code`) before the service resolves it against the terminology stored on this server into
    TokenTests and CodeSetTests (service/terminology.py); SQL is never built from an unresolved one."""

    mode: str  # in | below | above (`:not-in` is `in` on a negated clause)
    value: str
    # code systems implied by the searched `code` elements' bindings: their codes are stored without one
    implied: tuple[str, ...] = ()


Test = StringTest | TokenTest | RangeTest | UriTest | RefTest | CompositeTest | CodeSetTest | TermTest


@dataclass
class ParamClause:
    """Some index row of `param` matches one of `tests` (OR); `negate` for token `:not`."""

    kind: str  # key of TABLES
    param: str
    tests: list[Test]
    negate: bool = False


@dataclass
class MissingClause:
    """`param:missing=true|false` (R4 search 3.1.1.6): whether the resource has no index row of `param`."""

    kind: str
    param: str
    missing: bool


@dataclass
class ChainClause:
    """`param` references a resource of one of `target_types` that matches `criteria`."""

    param: str
    target_types: list[str]
    criteria: Criteria
    # the caller's access rules, which the referenced resources must meet too (set by the service)
    restriction: Restriction | None = None


@dataclass
class HasClause:
    """Some `source_type` resource whose `param` references this one matches `criteria` (`_has`)."""

    source_type: str
    param: str
    criteria: Criteria
    # the caller's access rules, which the referring resources must meet too (set by the service)
    restriction: Restriction | None = None


@dataclass
class IdClause:
    """`_id`: the resource's id is one of `ids`."""

    ids: list[str]


@dataclass
class UpdatedClause:
    """`_lastUpdated`: the last update satisfies one of the prefixed date tests (values joined by commas: OR)."""

    tests: list[RangeTest]


@dataclass
class ScanStatusClause:
    """Binary's custom `scan-status`: the malware scan verdict on the version's content is one of `states`;
    with `missing` set, instead whether the version holds no scanned content at all (True) or some (False)."""

    states: list[str]
    missing: bool | None = None


@dataclass
class AnyClause:
    """At least one of `clauses` holds (OR; `_filter`'s `or`, `_text` values joined by commas)."""

    clauses: list[Clause]


@dataclass
class AllClause:
    """Every one of `clauses` holds (AND inside an OR, or under a NOT)."""

    clauses: list[Clause]


@dataclass
class NotClause:
    """`clause` does not hold (`_filter`'s `not`)."""

    clause: Clause


@dataclass
class ListClause:
    """The resource is an item of one of the Lists `list_ids` (`_list`, R4 search.html#list)."""

    list_ids: list[str]
    # the caller's access rules, which the Lists must meet too (set by the service)
    restriction: Restriction | None = None


@dataclass
class NearClause:
    """A Location whose position lies within `distance_km` of (`latitude`, `longitude`), by great-circle
    distance (R4 location.html#positional)."""

    latitude: float
    longitude: float
    distance_km: float


Clause = (ParamClause | MissingClause | ChainClause | HasClause | IdClause | UpdatedClause | AnyClause | AllClause
          | NotClause | ListClause | NearClause | ScanStatusClause)


@dataclass
class Restriction:
    """What a caller may see, applied inside the query (see security/policy.py for the rules):
    `compartment` (`Patient/1`) limits every resource to that patient's compartment; Binaries are seen
    only through their securityContext, whose target type must be in `context_types` (None: any) and,
    with a compartment, must be the patient or lie in the patient's compartment; a Binary without
    securityContext is seen only when `binary_without_context`."""

    compartment: str | None = None
    context_types: frozenset[str] | None = None
    binary_without_context: bool = True


@dataclass
class Criteria:
    """Every clause must hold (AND). `types`: the resource types searched."""

    types: list[str]
    clauses: list[Clause] = field(default_factory=list)


@dataclass
class SortKey:
    """One `_sort` key (R4 search 3.1.1.7.1): the parameter's kind and code, and its direction."""

    kind: str  # key of TABLES, or "_id" / "_lastUpdated"
    param: str
    descending: bool = False


# -- SQL --------------------------------------------------------------------------------------------
def _range(prefix: str, low: Any, high: Any, t: RangeTest, point_inclusive: bool) -> ColumnElement[bool]:
    """One prefix on a stored range [low, high) (dates) or [low, high] (numbers, quantities)."""
    s, e, v = t.low, t.high, t.value
    inside = sa.and_(low >= s, high <= e) if not point_inclusive else sa.and_(low >= s, high < e)
    if prefix == "eq":
        return inside
    if prefix == "ne":
        return sa.not_(inside)
    if point_inclusive and prefix == "po":
        return sa.and_(low < e, high >= s)
    if point_inclusive:
        # sa / eb: the stored value is outside the search value's range [s, e) and above (below) it; a value
        # inside the range equals the search value at its precision (R4 search.html#prefix)
        conds: dict[str, ColumnElement[bool]] = {
            "gt": high > v, "lt": low < v, "ge": high >= v, "le": low <= v, "sa": low >= e, "eb": high < s,
        }
        if prefix == "ap":
            # within 10 % of the value, and never narrower than `eq` (ap0 finds what 0 finds)
            margin = abs(v) * 0.1
            return sa.and_(low <= max(v + margin, e), high >= min(v - margin, s))
        return conds[prefix]
    if prefix == "ap":
        return sa.and_(low < e, high > s)  # the service has widened [s, e) by the approximation margin
    if prefix == "po":
        return sa.and_(low < e, high > s)  # _filter's "overlaps"
    return {
        # ge / le: the target reaches into the search range or beyond it on that side (a period that
        # starts on 2025-01-10 is "le2025-01-10"), as HAPI and Blaze read R4 3.1.1.4.2's ranges
        "gt": high > e, "lt": low < s, "ge": high > s, "le": low < e,
        "sa": low >= e, "eb": high <= s,
    }[prefix]


def _string(col: Any, t: StringTest, exact_col: Any) -> ColumnElement[bool]:
    # normalized strings are kept as their first STRING_MAX characters: the service refuses longer values
    if t.mode == "exact":
        return exact_col == t.value
    if t.mode == "equal":
        return col == t.value
    if t.mode == "end":
        return col.endswith(t.value, autoescape=True)
    if t.mode == "contains":
        return col.contains(t.value, autoescape=True)
    return col.startswith(t.value, autoescape=True)


def _token(system_col: Any, code_col: Any, t: TokenTest) -> ColumnElement[bool]:
    conds = []
    if t.code is not None:
        conds.append(code_col == as_stored(code_col, t.code))
    if t.system == "":
        conds.append(system_col.is_(None))
    elif t.system is not None:
        conds.append(system_col == as_stored(system_col, t.system))
    return sa.and_(sa.true(), *conds)


def _uri(col: Any, t: UriTest) -> ColumnElement[bool]:
    if t.mode == "below":
        prefix = t.value.rstrip("/") + "/"
        # LIKE ignores the case of ASCII letters on SQLite, and uris match case-sensitively (R4 search.html#uri):
        # the substr comparison keeps the case, LIKE keeps PostgreSQL's index on text_pattern_ops usable.
        return sa.or_(col == as_stored(col, t.value),
                      sa.and_(col.startswith(prefix, autoescape=True), sa.func.substr(col, 1, len(prefix)) == prefix))
    if t.mode == "above":
        # every stored uri that is a path-prefix of the value
        prefixes = [t.value[:i] for i in range(len(t.value), 0, -1) if i == len(t.value) or t.value[i] == "/"]
        return col.in_([as_stored(col, p) for p in prefixes])
    return col == as_stored(col, t.value)


def _test(kind: str, table: Any, t: Test) -> ColumnElement[bool]:
    c = table.c
    if isinstance(t, CodeSetTest):
        return sa.and_(c.system.is_(None) if t.system == "" else c.system == as_stored(c.system, t.system),
                       c.value.in_([as_stored(c.value, code) for code in t.codes]))
    if isinstance(t, TermTest):
        raise TypeError(f"unresolved terminology test {t!r}: resolve the criteria first")
    if isinstance(t, StringTest):
        return _string(c.value, t, c.exact)
    if isinstance(t, TokenTest):
        return _token(c.system, c.value, t)
    if isinstance(t, RefTest):
        return c.target.in_([as_stored(c.target, target) for target in t.targets])
    if isinstance(t, UriTest):
        return _uri(c.value, t)
    if isinstance(t, RangeTest):
        cond = _range(t.prefix, c.low, c.high, t, point_inclusive=kind != "date")
        if kind == "quantity":
            extra = [cond]
            if t.system:
                extra.append(c.system == as_stored(c.system, t.system))
            if t.code:
                extra.append(c.code == as_stored(c.code, t.code))
            cond = sa.and_(*extra)
        return cond
    return _composite(c, t)


def _part(system: Any, value: Any, low: Any, high: Any, kind: str, t: Test) -> ColumnElement[bool]:
    """One composite component's test on the columns that hold that component's key."""
    if isinstance(t, TokenTest):
        return _token(system, value, t)
    if isinstance(t, StringTest):
        return _string(value, t, value)
    if isinstance(t, RefTest):
        return value.in_([as_stored(value, target) for target in t.targets])
    if isinstance(t, UriTest):
        return _uri(value, t)
    if isinstance(t, RangeTest):
        cond = _range(t.prefix, low, high, t, point_inclusive=kind != "date")
        if t.system:
            cond = sa.and_(cond, system == as_stored(system, t.system))
        if t.code:
            cond = sa.and_(cond, value == as_stored(value, t.code))
        return cond
    raise TypeError(f"no composite component test for {t!r}")


def _composite(c: Any, t: CompositeTest) -> ColumnElement[bool]:
    first = _part(c.system1, c.value1, None, None, t.kinds[0], t.parts[0])
    second = _part(c.system2, c.value2, c.low2, c.high2, t.kinds[1], t.parts[1])
    return sa.and_(first, second)


def _stored_rows(table: Any, rtype: str, param: str, typed: bool = False) -> ColumnElement[bool]:
    """The index rows of `param` of `rtype` in `table` (fhir/search_storage.py: a parameter may be
    stored as the rows of others, restricted to one reference target type). `typed`: the caller's own
    condition already holds the rows to targets of that type (see target_type), so the pattern test
    of the target text is left out: besides costing a test per row, its guessed selectivity made the
    PostgreSQL planner expect no rows, and nest loops over them."""
    stored = stored_as(rtype, param)
    cond = table.c.param == stored.params[0] if len(stored.params) == 1 else table.c.param.in_(stored.params)
    if stored.target_type is not None and not typed:
        t = stored.target_type
        cond = sa.and_(cond, sa.or_(table.c.target.startswith(f"{t}/", autoescape=True),
                                    table.c.target.contains(f"/{t}/", autoescape=True)))
    return cond


def target_type(types: Sequence[str], param: str) -> str | None:
    """The one target type every owner type of `types` restricts the rows of `param` to (Observation
    `patient`: Patient), or None when some type keeps rows of its own or the types differ."""
    found = {stored_as(t, param).target_type for t in types}
    only = found.pop() if len(found) == 1 else None
    return only


def of_type(target: str, rtype: str) -> bool:
    """Whether the reference text `target` names a resource of `rtype`, as the index rows' pattern test
    reads it (FHIRPath `resolve() is T`: `T/id`, or `/T/` inside an absolute reference)."""
    return target.startswith(f"{rtype}/") or f"/{rtype}/" in target


def param_rows(table: Any, owner_type: Any, types: Sequence[str], param: str,
               typed: bool = False) -> ColumnElement[bool]:
    """The rows of `param` in `table` for owners of any of `types` (`owner_type`: the owner's
    resource_type column): one condition when the types store `param` alike, else one per type.
    `typed`: as for _stored_rows."""
    if not types:
        return sa.false()
    groups: dict[StoredAs, list[str]] = {}
    for t in types:
        groups.setdefault(stored_as(t, param), []).append(t)
    if len(groups) == 1:
        return _stored_rows(table, types[0], param, typed)
    return sa.or_(*[sa.and_(owner_type.in_(ts), _stored_rows(table, ts[0], param, typed))
                    for ts in groups.values()])


def _owned(table: Any, owner: Any, param: str, types: Sequence[str]) -> list[ColumnElement[bool]]:
    return [table.c.resource_type == owner.c.resource_type, table.c.id == owner.c.id,
            param_rows(table, owner.c.resource_type, types, param)]


def _has_rows(table: Any, owner: Any, types: Sequence[str], param: str, *match: Any,
              typed: bool = False) -> ColumnElement[bool]:
    """`owner` has a row of `param` in `table` that meets `match`, as `id IN (SELECT id ...)`: a subquery
    that does not depend on the owner, so that both databases read it from the (type, param, value)
    index and, with planner statistics, go from its few ids to the resources (a correlated EXISTS is
    run once per resource of the type on SQLite, whatever the statistics). `typed`: `match` holds the
    rows to targets of the parameter's target type (see _stored_rows)."""
    if len(types) == 1:  # criteria_sql has already held the owner to this type
        ids = sa.select(table.c.id).where(table.c.resource_type == types[0],
                                          _stored_rows(table, types[0], param, typed), *match)
        return owner.c.id.in_(ids)
    pairs = sa.select(table.c.resource_type, table.c.id).where(
        table.c.resource_type.in_(types), param_rows(table, table.c.resource_type, types, param, typed), *match)
    return sa.tuple_(owner.c.resource_type, owner.c.id).in_(pairs)


def _composite_parts(owner: Any, types: Sequence[str], param: str, t: CompositeTest) -> ColumnElement[bool]:
    """Some element of `owner` has, for every component, a value matching that component's test: a row of
    part 0 among the rows of `param` (param_rows), and one of every other part with the same parameter
    and element number (element numbers count the elements of one parameter)."""
    first: Any = search_composite_parts.alias()
    conds: list[ColumnElement[bool]] = [
        first.c.part == 0, _part(first.c.system, first.c.value, first.c.low, first.c.high, t.kinds[0], t.parts[0])]
    for number in range(1, len(t.parts)):
        other: Any = search_composite_parts.alias()
        conds.append(sa.exists().where(
            other.c.resource_type == first.c.resource_type, other.c.id == first.c.id, other.c.param == first.c.param,
            other.c.element == first.c.element, other.c.part == number,
            _part(other.c.system, other.c.value, other.c.low, other.c.high, t.kinds[number], t.parts[number])))
    return _has_rows(first, owner, types, param, *conds)


def _ref_to(owner: Any) -> ColumnElement[Any]:
    """`Type/id` of the owner row, as SQL."""
    return owner.c.resource_type + sa.literal("/") + owner.c.id


def clause_sql(clause: Clause, owner: Any, types: Sequence[str]) -> ColumnElement[bool]:
    """One clause as a condition on `owner` (an alias of `resources` holding resources of `types`)."""
    if isinstance(clause, IdClause):
        return owner.c.id.in_(clause.ids)
    if isinstance(clause, ScanStatusClause):
        return scan_state_matches(owner, clause.states, clause.missing)
    if isinstance(clause, UpdatedClause):
        return sa.or_(*[_range(t.prefix, owner.c.last_updated, owner.c.last_updated + 1, t, False)
                        for t in clause.tests])
    if isinstance(clause, AnyClause):
        return sa.or_(sa.false(), *[clause_sql(c, owner, types) for c in clause.clauses])
    if isinstance(clause, AllClause):
        return sa.and_(sa.true(), *[clause_sql(c, owner, types) for c in clause.clauses])
    if isinstance(clause, NotClause):
        return sa.not_(clause_sql(clause.clause, owner, types))
    if isinstance(clause, ListClause):
        return _in_lists(owner, clause.list_ids, clause.restriction)
    if isinstance(clause, NearClause):
        return _near(owner, types, clause)
    if isinstance(clause, MissingClause):
        table: Any = TABLES[clause.kind].alias()
        exists = _has_rows(table, owner, types, clause.param)
        return sa.not_(exists) if clause.missing else exists
    if isinstance(clause, ChainClause):
        target = resources.alias()
        # only resources the caller may read can make a chain match (else it tells what they hold)
        inner = criteria_sql(clause.criteria, target) + restriction_sql(clause.restriction, target)
        wanted, implied = clause.target_types, target_type(types, clause.param)
        if implied is not None:
            # targets are `T/id` texts: of the implied type exactly when T is that type
            wanted = [t for t in wanted if t == implied]
            if not wanted:
                return sa.false()
        targets = sa.select(_ref_to(target)).where(target.c.resource_type.in_(wanted), *inner)
        refs = search_refs.alias()
        return _has_rows(refs, owner, types, clause.param, refs.c.target.in_(targets), typed=implied is not None)
    if isinstance(clause, HasClause):
        return _has_clause(clause, owner, types)
    if clause.kind == "composite-parts":
        found = sa.or_(*[_composite_parts(owner, types, clause.param, t) for t in clause.tests
                         if isinstance(t, CompositeTest)])
        return sa.not_(found) if clause.negate else found
    table = TABLES[clause.kind].alias()
    tests: list[Test] = list(clause.tests)
    typed = False
    implied = target_type(types, clause.param) if clause.kind == "reference" else None
    refs_only = [t for t in tests if isinstance(t, RefTest)]
    if implied is not None and len(refs_only) == len(tests):
        # the pattern test of the rows' targets, done here on the few texts searched for
        kept = [RefTest(tuple(x for x in t.targets if of_type(x, implied))) for t in refs_only]
        tests = [t for t in kept if t.targets]
        typed = True
    match = sa.or_(sa.false(), *[_test(clause.kind, table, t) for t in tests])
    exists = _has_rows(table, owner, types, clause.param, match, typed=typed) if tests else sa.false()
    return sa.not_(exists) if clause.negate else exists


def _has_clause(clause: HasClause, owner: Any, types: Sequence[str]) -> ColumnElement[bool]:
    """`_has`: the owner's id is among the ids named by the references of the matching sources, for each
    owner type the parameter may name: `owner.id IN (SELECT the id part of the target ...)`, a subquery
    that does not depend on the owner, so that both databases go from the matching sources (their own
    criteria) by the owner index of their reference rows to the owners by primary key, instead of asking
    the question once per resource of the owner's type. A target names an owner of type O exactly when
    it is `O/` followed by the owner's id (compared by substr, not LIKE, which SQLite folds in case)."""
    implied = stored_as(clause.source_type, clause.param).target_type
    alternatives: list[ColumnElement[bool]] = []
    for rtype in types:
        if implied is not None and rtype != implied:
            continue  # the parameter names only resources of the implied type
        source = resources.alias()
        refs = search_refs.alias()
        prefix = f"{rtype}/"
        named = sa.select(sa.func.substr(refs.c.target, len(prefix) + 1)).where(
            refs.c.resource_type == clause.source_type,
            _stored_rows(refs, clause.source_type, clause.param, typed=True),
            sa.func.substr(refs.c.target, 1, len(prefix)) == prefix,
            source.c.resource_type == refs.c.resource_type, source.c.id == refs.c.id,
            # only sources the caller may read can make `_has` match (else it tells what they hold)
            *criteria_sql(clause.criteria, source), *restriction_sql(clause.restriction, source))
        cond = owner.c.id.in_(named)
        alternatives.append(cond if len(types) == 1 else sa.and_(owner.c.resource_type == rtype, cond))
    return sa.or_(sa.false(), *alternatives)


def _in_lists(owner: Any, list_ids: list[str], restriction: Restriction | None) -> ColumnElement[bool]:
    """Some live List of `list_ids` that `restriction` lets the caller read has the owner among its
    `entry.item` references."""
    refs: Any = search_refs.alias()
    lists: Any = resources.alias()
    return sa.exists().where(
        refs.c.resource_type == "List", refs.c.id.in_(list_ids), _stored_rows(refs, "List", "item"),
        refs.c.target == _ref_to(owner),
        lists.c.resource_type == "List", lists.c.id == refs.c.id, lists.c.deleted.is_(False),
        *restriction_sql(restriction, lists))


EARTH_RADIUS_KM = 6371.0088  # the mean radius (IUGG); distances are great-circle distances on this sphere
NEAR_PARAMS = ("near:latitude", "near:x", "near:y", "near:z")  # index rows of Location.position


def unit_vector(latitude: float, longitude: float) -> tuple[float, float, float]:
    """The point on the unit sphere at (`latitude`, `longitude`), in degrees."""
    phi, lam = math.radians(latitude), math.radians(longitude)
    return math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)


def _near(owner: Any, types: Sequence[str], clause: NearClause) -> ColumnElement[bool]:
    """Latitude within the distance's band first (an index range), then the exact great-circle test:
    the dot product of the stored unit vector with the search point's is at least cos(distance / R),
    plain arithmetic that SQLite and PostgreSQL compute alike."""
    angle = min(clause.distance_km / EARTH_RADIUS_KM, math.pi)
    band = math.degrees(angle)
    lat, x, y, z = (search_numbers.alias() for _ in NEAR_PARAMS)
    px, py, pz = unit_vector(clause.latitude, clause.longitude)
    conds: list[ColumnElement[bool]] = []
    for row, param in zip((lat, x, y, z), NEAR_PARAMS, strict=True):
        conds += _owned(row, owner, param, types)
    conds += [lat.c.low >= clause.latitude - band, lat.c.low <= clause.latitude + band,
              x.c.low * px + y.c.low * py + z.c.low * pz >= math.cos(angle) - 1e-12]
    return sa.exists().where(*conds)


def criteria_sql(criteria: Criteria, owner: Any) -> list[ColumnElement[bool]]:
    """Every condition of `criteria` on `owner`, live resources only."""
    where: list[ColumnElement[bool]] = [owner.c.deleted.is_(False)]
    if len(criteria.types) == 1:
        where.append(owner.c.resource_type == criteria.types[0])
    else:
        where.append(owner.c.resource_type.in_(criteria.types))
    where += [clause_sql(c, owner, criteria.types) for c in criteria.clauses]
    return where


def _in_compartment(owner: Any, patient: str) -> ColumnElement[bool]:
    refs = search_refs.alias()
    return sa.exists().where(refs.c.resource_type == owner.c.resource_type, refs.c.id == owner.c.id,
                             refs.c.param == COMPARTMENT, refs.c.target == patient)


Has = Callable[..., ColumnElement[bool]]  # has(param, *conditions on the row's `target`)


def _restriction(r: Restriction, rtype: Any, has: Has, target: Any) -> ColumnElement[bool]:
    """The rules of `Restriction` over access rows that `has` finds (their `target` column given)."""
    context_ok: list[ColumnElement[bool]] = []
    if r.context_types is not None:
        context_ok.append(sa.or_(sa.false(), *[target.startswith(f"{t}/") for t in sorted(r.context_types)]))
    if r.compartment is not None:
        current = resources.alias()
        context_ok.append(sa.or_(
            target == r.compartment,
            target.in_(sa.select(_ref_to(current)).where(_in_compartment(current, r.compartment)))))
    binary_ok = sa.or_(
        has(SECURITY_CONTEXT, *context_ok),
        sa.and_(sa.not_(has(SECURITY_CONTEXT)), sa.true() if r.binary_without_context else sa.false()),
    )
    other_ok = has(COMPARTMENT, target == r.compartment) if r.compartment is not None else sa.true()
    return sa.or_(sa.and_(rtype == "Binary", binary_ok), sa.and_(rtype != "Binary", other_ok))


def restriction_sql(r: Restriction | None, owner: Any) -> list[ColumnElement[bool]]:
    """The caller's access rules as conditions on `owner` (see Restriction), over the current index."""
    if r is None:
        return []
    ctx: Any = search_refs.alias()

    def has(param: str, *conds: ColumnElement[bool]) -> ColumnElement[bool]:
        # access rows (`_compartment`, `_securityContext`) are always their own (fhir/search_storage.py)
        return sa.exists().where(ctx.c.resource_type == owner.c.resource_type, ctx.c.id == owner.c.id,
                                 ctx.c.param == param, *conds)

    return [_restriction(r, owner.c.resource_type, has, ctx.c.target)]


def version_restriction_sql(r: Restriction | None, version: Any) -> list[ColumnElement[bool]]:
    """The same rules on a row of `resource_versions`, judged by what that version held (a deletion by
    the version before it), so that history pages and totals hold only what the caller may see."""
    if r is None:
        return []
    va: Any = version_access.alias()
    judged = sa.case((version.c.deleted.is_(True), version.c.version_id - 1), else_=version.c.version_id)

    def has(param: str, *conds: ColumnElement[bool]) -> ColumnElement[bool]:
        return sa.exists().where(va.c.resource_type == version.c.resource_type, va.c.id == version.c.id,
                                 va.c.version_id == judged, va.c.param == param, *conds)

    return [_restriction(r, version.c.resource_type, has, va.c.target)]


@dataclass(frozen=True)
class SortTerm:
    """One ORDER BY term of a search: its SQL expression, its direction, and whether it may be NULL (a
    parameter key: resources without a value for it sort last, in both directions)."""

    expr: Any
    descending: bool
    nullable: bool


def sort_terms(keys: list[SortKey], owner: Any, types: Sequence[str]) -> list[SortTerm]:
    """The ORDER BY terms of `keys`, then type and id so that pages are stable (every result has a place of
    its own); `types`: the resource types searched."""
    terms: list[SortTerm] = []
    for key in keys:
        if key.kind == "_id":
            terms.append(SortTerm(owner.c.id, key.descending, False))
            continue
        if key.kind == "_lastUpdated":
            terms.append(SortTerm(owner.c.last_updated, key.descending, False))
            continue
        table: Any = TABLES[key.kind].alias()
        value = {"string": "value", "token": "value", "reference": "target", "uri": "value",
                 "composite": "value1"}.get(key.kind)
        if value is None:
            column = table.c.high if key.descending else table.c.low
            agg = sa.func.max(column) if key.descending else sa.func.min(column)
        else:
            agg = sa.func.max(table.c[value]) if key.descending else sa.func.min(table.c[value])
        col = sa.select(agg).where(*_owned(table, owner, key.param, types)).scalar_subquery()
        terms.append(SortTerm(col, key.descending, True))
    return [*terms, SortTerm(owner.c.resource_type, False, False), SortTerm(owner.c.id, False, False)]


def sort_columns(keys: list[SortKey], owner: Any, types: Sequence[str], reverse: bool = False) -> list[Any]:
    """ORDER BY terms: each key (resources without a value for it last), then type and id so that pages are stable;
    `types`: the resource types searched. `reverse`: the exact reverse of that order (each term the other
    way, resources without a value first), for the page that ends before a point (see before_sql)."""
    order: list[Any] = []
    for term in sort_terms(keys, owner, types):
        col = term.expr.desc() if term.descending != reverse else term.expr.asc()
        # NULLS LAST rather than a CASE on the key ahead of it: the key's subquery runs once per
        # candidate instead of twice (SQLite evaluates each occurrence; both databases know NULLS LAST)
        if term.nullable:
            col = col.nulls_first() if reverse else col.nulls_last()
        order.append(col)
    return order


def _same(term: SortTerm, v: Any) -> ColumnElement[bool]:
    """The term's value is `v` (missing when `v` is None): the tie of keyset paging on one key."""
    return term.expr.is_(None) if v is None else term.expr == v


def after_sql(terms: list[SortTerm], values: Sequence[Any]) -> ColumnElement[bool]:
    """Keyset paging: the resources that come after the one whose sort values (one per term of
    `terms`, in order; None for a missing value) are `values`, in the order of `terms` (NULLS LAST).
    Unlike an offset, this does not shift when resources ahead of that point leave the result.
    Raises ValueError when `values` do not fit `terms` (see check_after)."""
    check_after(terms, values)

    def beyond(term: SortTerm, v: Any) -> ColumnElement[bool]:
        if v is None:
            return sa.false()  # nothing sorts after a missing value but other missing values
        later = term.expr < v if term.descending else term.expr > v
        # a missing value sorts last: NULL > v counts as true (one occurrence of a key's subquery, not two)
        return sa.func.coalesce(later, sa.true()) if term.nullable else later

    def after(i: int) -> ColumnElement[bool]:
        # nested rather than a flat OR of prefixes, so that each key's expression occurs twice, not once per
        # later key (SQLite evaluates every occurrence of a key's subquery)
        if i == len(terms) - 1:
            return beyond(terms[i], values[i])
        return sa.or_(beyond(terms[i], values[i]), sa.and_(_same(terms[i], values[i]), after(i + 1)))

    condition = after(0)
    first, v0 = terms[0], values[0]
    if first.nullable or v0 is None:
        return condition
    # the same condition's bound on the first key alone, which an index on it can start from (PostgreSQL
    # walks `_lastUpdated` order from the cursor instead of from the first resource of the type)
    return sa.and_(first.expr <= v0 if first.descending else first.expr >= v0, condition)


def before_sql(terms: list[SortTerm], values: Sequence[Any], inclusive: bool = False) -> ColumnElement[bool]:
    """Keyset paging backwards: the resources that come before the one whose sort values are `values` (as
    for after_sql), in the order of `terms` (NULLS LAST), and that one too when `inclusive`. The mirror
    of after_sql: before a missing value come every present value and the missing ones that sort
    ahead on the later terms; before a present value, no missing value. Raises ValueError when
    `values` do not fit `terms` (see check_after)."""
    check_after(terms, values)

    def ahead(term: SortTerm, v: Any, or_same: bool) -> ColumnElement[bool]:
        if v is None:  # every present value sorts ahead of a missing one
            return sa.true() if or_same else term.expr.is_not(None)
        if or_same:
            return term.expr >= v if term.descending else term.expr <= v
        # a missing value sorts last, never ahead of a present one: NULL < v is NULL, which selects
        # nothing (no NOT above it), so no COALESCE is needed
        return term.expr > v if term.descending else term.expr < v

    def before(i: int) -> ColumnElement[bool]:
        # nested as in after_sql: each key's expression occurs twice, not once per later key
        if i == len(terms) - 1:
            return ahead(terms[i], values[i], inclusive)
        return sa.or_(ahead(terms[i], values[i], False), sa.and_(_same(terms[i], values[i]), before(i + 1)))

    condition = before(0)
    first, v0 = terms[0], values[0]
    if first.nullable or v0 is None:
        return condition
    # the condition's bound on the first key alone, which an index on it can start from (walked backwards)
    return sa.and_(first.expr >= v0 if first.descending else first.expr <= v0, condition)


def check_after(terms: list[SortTerm], values: Sequence[Any]) -> None:
    """Raises ValueError unless `values` fit `terms`: one per term, each None (where a term may lack a
    value) or of the term's kind (str for text, int for microseconds, int or float for numbers)."""
    if len(values) != len(terms):
        raise ValueError(f"{len(values)} sort values for {len(terms)} sort keys")
    for term, v in zip(terms, values, strict=True):
        if v is None and term.nullable:
            continue
        want: tuple[type, ...] = (str,) if isinstance(term.expr.type, sa.String) else \
            (int,) if isinstance(term.expr.type, sa.Integer) else (int, float)
        if isinstance(v, bool) or not isinstance(v, want):
            raise ValueError(f"sort value {v!r} does not fit its key")
