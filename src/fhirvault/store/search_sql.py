"""Search criteria as SQL (SQLAlchemy Core, one code path for SQLite and PostgreSQL).

The service turns query parameters into the criteria classes below; this module turns criteria into
WHERE clauses over the `resources` table and its index tables (store/search_tables.py). Semantics
follow FHIR R4 3.1.1.4 (prefixes on ranges, string and token matching); the service has already
checked every name, modifier and value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from fhirvault.fhir.search_storage import StoredAs, stored_as
from fhirvault.store.scan_rows import scan_state_matches
from fhirvault.store.schema import resources, search_refs, search_tokens
from fhirvault.store.search_tables import (
    search_composites,
    search_dates,
    search_numbers,
    search_quantities,
    search_strings,
    search_uris,
)

TABLES: dict[str, sa.Table] = {
    "string": search_strings, "token": search_tokens, "reference": search_refs, "date": search_dates,
    "number": search_numbers, "quantity": search_quantities, "uri": search_uris, "composite": search_composites,
}
COMPARTMENT = "_compartment"
SECURITY_CONTEXT = "_securityContext"


# -- criteria -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StringTest:
    mode: str  # start | exact | contains
    value: str  # normalized for start/contains, as given for exact


@dataclass(frozen=True)
class TokenTest:
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
    mode: str  # eq | below | above
    value: str


@dataclass(frozen=True)
class RefTest:
    targets: tuple[str, ...]  # `Type/id` or a literal reference text


@dataclass(frozen=True)
class CompositeTest:
    first: TokenTest | RefTest
    second: TokenTest | RangeTest | StringTest | RefTest
    second_kind: str  # the second component's parameter type


Test = StringTest | TokenTest | RangeTest | UriTest | RefTest | CompositeTest


@dataclass
class ParamClause:
    """Some index row of `param` matches one of `tests` (OR); `negate` for token `:not`."""

    kind: str  # key of TABLES
    param: str
    tests: list[Test]
    negate: bool = False


@dataclass
class MissingClause:
    kind: str
    param: str
    missing: bool


@dataclass
class ChainClause:
    """`param` references a resource of one of `target_types` that matches `criteria`."""

    param: str
    target_types: list[str]
    criteria: Criteria


@dataclass
class HasClause:
    """Some `source_type` resource whose `param` references this one matches `criteria` (`_has`)."""

    source_type: str
    param: str
    criteria: Criteria


@dataclass
class IdClause:
    ids: list[str]


@dataclass
class UpdatedClause:
    tests: list[RangeTest]


@dataclass
class ScanStatusClause:
    """Binary's custom `scan-status`: the malware scan verdict on the version's content is one of `states`."""

    states: list[str]


Clause = ParamClause | MissingClause | ChainClause | HasClause | IdClause | UpdatedClause | ScanStatusClause


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
    if point_inclusive:
        conds: dict[str, ColumnElement[bool]] = {
            "gt": high > v, "lt": low < v, "ge": high >= v, "le": low <= v, "sa": low > v, "eb": high < v,
        }
        if prefix == "ap":
            margin = abs(v) * 0.1
            return sa.and_(low <= v + margin, high >= v - margin)
        return conds[prefix]
    if prefix == "ap":
        return sa.and_(low < e, high > s)  # the service has widened [s, e) by the approximation margin
    return {
        # ge / le: the target reaches into the search range or beyond it on that side (a period that
        # starts on 2025-01-10 is "le2025-01-10"), as HAPI and Blaze read R4 3.1.1.4.2's ranges
        "gt": high > e, "lt": low < s, "ge": high > s, "le": low < e,
        "sa": low >= e, "eb": high <= s,
    }[prefix]


def _string(col: Any, t: StringTest, exact_col: Any) -> ColumnElement[bool]:
    if t.mode == "exact":
        return exact_col == t.value
    if t.mode == "contains":
        return col.contains(t.value, autoescape=True)
    return col.startswith(t.value, autoescape=True)


def _token(system_col: Any, code_col: Any, t: TokenTest) -> ColumnElement[bool]:
    conds = []
    if t.code is not None:
        conds.append(code_col == t.code)
    if t.system == "":
        conds.append(system_col.is_(None))
    elif t.system is not None:
        conds.append(system_col == t.system)
    return sa.and_(sa.true(), *conds)


def _uri(col: Any, t: UriTest) -> ColumnElement[bool]:
    if t.mode == "below":
        return sa.or_(col == t.value, col.startswith(t.value.rstrip("/") + "/", autoescape=True))
    if t.mode == "above":
        # every stored uri that is a path-prefix of the value
        prefixes = [t.value[:i] for i in range(len(t.value), 0, -1) if i == len(t.value) or t.value[i] == "/"]
        return col.in_(prefixes)
    return col == t.value


def _test(kind: str, table: Any, t: Test) -> ColumnElement[bool]:
    c = table.c
    if isinstance(t, StringTest):
        return _string(c.value, t, c.exact)
    if isinstance(t, TokenTest):
        return _token(c.system, c.value, t)
    if isinstance(t, RefTest):
        return c.target.in_(t.targets)
    if isinstance(t, UriTest):
        return _uri(c.value, t)
    if isinstance(t, RangeTest):
        cond = _range(t.prefix, c.low, c.high, t, point_inclusive=kind != "date")
        if kind == "quantity":
            extra = [cond]
            if t.system:
                extra.append(c.system == t.system)
            if t.code:
                extra.append(c.code == t.code)
            cond = sa.and_(*extra)
        return cond
    return _composite(c, t)


def _composite(c: Any, t: CompositeTest) -> ColumnElement[bool]:
    first = (_token(c.system1, c.value1, t.first) if isinstance(t.first, TokenTest)
             else c.value1.in_(t.first.targets))
    s = t.second
    if isinstance(s, TokenTest):
        second = _token(c.system2, c.value2, s)
    elif isinstance(s, StringTest):
        second = _string(c.value2, s, c.value2)
    elif isinstance(s, RefTest):
        second = c.value2.in_(s.targets)
    else:
        second = _range(s.prefix, c.low2, c.high2, s, point_inclusive=t.second_kind != "date")
        if s.system:
            second = sa.and_(second, c.system2 == s.system)
        if s.code:
            second = sa.and_(second, c.value2 == s.code)
    return sa.and_(first, second)


def _stored_rows(table: Any, rtype: str, param: str) -> ColumnElement[bool]:
    """The index rows of `param` of `rtype` in `table` (fhir/search_storage.py: a parameter may be
    stored as the rows of others, restricted to one reference target type)."""
    stored = stored_as(rtype, param)
    cond = table.c.param == stored.params[0] if len(stored.params) == 1 else table.c.param.in_(stored.params)
    if stored.target_type is not None:
        t = stored.target_type
        cond = sa.and_(cond, sa.or_(table.c.target.startswith(f"{t}/", autoescape=True),
                                    table.c.target.contains(f"/{t}/", autoescape=True)))
    return cond


def param_rows(table: Any, owner_type: Any, types: Sequence[str], param: str) -> ColumnElement[bool]:
    """The rows of `param` in `table` for owners of any of `types` (`owner_type`: the owner's
    resource_type column): one condition when the types store `param` alike, else one per type."""
    if not types:
        return sa.false()
    groups: dict[StoredAs, list[str]] = {}
    for t in types:
        groups.setdefault(stored_as(t, param), []).append(t)
    if len(groups) == 1:
        return _stored_rows(table, types[0], param)
    return sa.or_(*[sa.and_(owner_type.in_(ts), _stored_rows(table, ts[0], param)) for ts in groups.values()])


def _owned(table: Any, owner: Any, param: str, types: Sequence[str]) -> list[ColumnElement[bool]]:
    return [table.c.resource_type == owner.c.resource_type, table.c.id == owner.c.id,
            param_rows(table, owner.c.resource_type, types, param)]


def _has_rows(table: Any, owner: Any, types: Sequence[str], param: str, *match: Any) -> ColumnElement[bool]:
    """`owner` has a row of `param` in `table` that meets `match`, as `id IN (SELECT id ...)`: a subquery
    that does not depend on the owner, so that both databases read it from the (type, param, value)
    index and, with planner statistics, go from its few ids to the resources (a correlated EXISTS is
    run once per resource of the type on SQLite, whatever the statistics)."""
    if len(types) == 1:  # criteria_sql has already held the owner to this type
        ids = sa.select(table.c.id).where(table.c.resource_type == types[0], _stored_rows(table, types[0], param),
                                          *match)
        return owner.c.id.in_(ids)
    pairs = sa.select(table.c.resource_type, table.c.id).where(
        table.c.resource_type.in_(types), param_rows(table, table.c.resource_type, types, param), *match)
    return sa.tuple_(owner.c.resource_type, owner.c.id).in_(pairs)


def _ref_to(owner: Any) -> ColumnElement[Any]:
    """`Type/id` of the owner row, as SQL."""
    return owner.c.resource_type + sa.literal("/") + owner.c.id


def clause_sql(clause: Clause, owner: Any, types: Sequence[str]) -> ColumnElement[bool]:
    """One clause as a condition on `owner` (an alias of `resources` holding resources of `types`)."""
    if isinstance(clause, IdClause):
        return owner.c.id.in_(clause.ids)
    if isinstance(clause, ScanStatusClause):
        return scan_state_matches(owner, clause.states)
    if isinstance(clause, UpdatedClause):
        return sa.or_(*[_range(t.prefix, owner.c.last_updated, owner.c.last_updated + 1, t, False)
                        for t in clause.tests])
    if isinstance(clause, MissingClause):
        table: Any = TABLES[clause.kind].alias()
        exists = _has_rows(table, owner, types, clause.param)
        return sa.not_(exists) if clause.missing else exists
    if isinstance(clause, ChainClause):
        target = resources.alias()
        inner = criteria_sql(clause.criteria, target)
        targets = sa.select(_ref_to(target)).where(target.c.resource_type.in_(clause.target_types), *inner)
        refs = search_refs.alias()
        return _has_rows(refs, owner, types, clause.param, refs.c.target.in_(targets))
    if isinstance(clause, HasClause):
        source = resources.alias()
        refs = search_refs.alias()
        inner = criteria_sql(clause.criteria, source)
        return sa.exists().where(
            refs.c.resource_type == clause.source_type, _stored_rows(refs, clause.source_type, clause.param),
            refs.c.target == _ref_to(owner),
            source.c.resource_type == refs.c.resource_type, source.c.id == refs.c.id, *inner)
    table = TABLES[clause.kind].alias()
    match = sa.or_(*[_test(clause.kind, table, t) for t in clause.tests])
    exists = _has_rows(table, owner, types, clause.param, match)
    return sa.not_(exists) if clause.negate else exists


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


def restriction_sql(r: Restriction | None, owner: Any) -> list[ColumnElement[bool]]:
    """The caller's access rules as conditions on `owner` (see Restriction)."""
    if r is None:
        return []
    ctx: Any = search_refs.alias()
    context_ok: list[ColumnElement[bool]] = []
    if r.context_types is not None:
        context_ok.append(sa.or_(sa.false(), *[ctx.c.target.startswith(f"{t}/") for t in sorted(r.context_types)]))
    if r.compartment is not None:
        target = resources.alias()
        context_ok.append(sa.or_(
            ctx.c.target == r.compartment,
            ctx.c.target.in_(sa.select(_ref_to(target)).where(_in_compartment(target, r.compartment)))))
    has_context = sa.exists().where(*_owned(ctx, owner, SECURITY_CONTEXT, ["Binary"]))
    binary_ok = sa.or_(
        sa.exists().where(*_owned(ctx, owner, SECURITY_CONTEXT, ["Binary"]), *context_ok),
        sa.and_(sa.not_(has_context), sa.true() if r.binary_without_context else sa.false()),
    )
    other_ok = _in_compartment(owner, r.compartment) if r.compartment is not None else sa.true()
    return [sa.or_(sa.and_(owner.c.resource_type == "Binary", binary_ok),
                   sa.and_(owner.c.resource_type != "Binary", other_ok))]


def sort_columns(keys: list[SortKey], owner: Any, types: Sequence[str]) -> list[Any]:
    """ORDER BY terms: each key (missing values last), then type and id so that pages are stable;
    `types`: the resource types searched."""
    order: list[Any] = []
    for key in keys:
        if key.kind == "_id":
            col: Any = owner.c.id
        elif key.kind == "_lastUpdated":
            col = owner.c.last_updated
        else:
            table: Any = TABLES[key.kind].alias()
            value = {"string": "value", "token": "value", "reference": "target", "uri": "value",
                     "composite": "value1"}.get(key.kind)
            if value is None:
                column = table.c.high if key.descending else table.c.low
                agg = sa.func.max(column) if key.descending else sa.func.min(column)
            else:
                agg = sa.func.max(table.c[value]) if key.descending else sa.func.min(table.c[value])
            col = sa.select(agg).where(*_owned(table, owner, key.param, types)).scalar_subquery()
            order.append(sa.case((col.is_(None), 1), else_=0))
        order.append(col.desc() if key.descending else col.asc())
    order += [owner.c.resource_type, owner.c.id]
    return order
