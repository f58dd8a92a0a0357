"""Token `:in`, `:not-in`, `:below` and `:above` resolved against the ValueSets and CodeSystems stored on
this server (R4 search.html#token, valueset.html#compositions, codesystem.html#hierarchy).

A value set is expanded from its `expansion.contains` when it carries one, else from its
`compose.include` / `compose.exclude`: listed concepts, whole code systems (every concept of a
CodeSystem stored here; any code of a system this server does not hold), `is-a`, `descendent-of`,
`in` and `=concept` filters over a stored CodeSystem's hierarchy, and other value sets. Subsumption
follows a CodeSystem's nested `concept` lists and its `parent` / `child` properties. A value set or code
system that cannot be found, a filter this server cannot evaluate, or an expansion over MAX_CODES codes
is a 400 naming it: never a silently empty match. Lookups run on the server's authority (terminology is
definitional content); the search they serve still applies the caller's access rules."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.errors import Invalid
from fhirvault.fhir.references import parse_reference
from fhirvault.store.resources import ResourceStore
from fhirvault.store.search_sql import (
    AllClause,
    AnyClause,
    ChainClause,
    Clause,
    CodeSetTest,
    Criteria,
    HasClause,
    NotClause,
    ParamClause,
    SortKey,
    TermTest,
    Test,
    TokenTest,
    UriTest,
)

MAX_CODES = 10_000
MAX_DEPTH = 8  # value sets including value sets
Code = tuple[str, str | None]  # (system, code); code None: any code of the system


def _clauses(criteria: Criteria) -> Iterator[Clause]:
    stack: list[Clause] = list(criteria.clauses)
    while stack:
        clause = stack.pop()
        yield clause
        if isinstance(clause, AnyClause | AllClause):
            stack += clause.clauses
        elif isinstance(clause, NotClause):
            stack.append(clause.clause)
        elif isinstance(clause, ChainClause | HasClause):
            stack += clause.criteria.clauses


async def resolve_terms(conn: AsyncConnection, store: ResourceStore, criteria: Criteria, base_url: str) -> None:
    """Replace, in place, every TermTest inside `criteria` (chains, `_has`, `_filter` included) by the
    token tests of the codes it stands for. Raises Invalid as the module docstring says."""
    terms = Terminology(conn, store, base_url)
    for clause in _clauses(criteria):
        if isinstance(clause, ParamClause) and any(isinstance(t, TermTest) for t in clause.tests):
            resolved: list[Test] = []
            for t in clause.tests:
                resolved += await terms.tests(t) if isinstance(t, TermTest) else [t]
            clause.tests = resolved


def _as_tests(codes: set[Code]) -> list[Test]:
    by_system: dict[str, list[str]] = defaultdict(list)
    tests: list[Test] = []
    for system, code in sorted(codes, key=lambda c: (c[0], c[1] or "")):
        if code is None:
            tests.append(TokenTest(system, None))
        else:
            by_system[system].append(code)
    tests += [CodeSetTest(system, tuple(codes)) for system, codes in by_system.items()]
    # an empty value set matches nothing: a test no row passes
    return tests or [CodeSetTest("", ())]


class Terminology:
    """Value set expansion and subsumption over the resources of one open connection."""

    def __init__(self, conn: AsyncConnection, store: ResourceStore, base_url: str) -> None:
        self.conn = conn
        self.store = store
        self.base_url = base_url

    async def tests(self, t: TermTest) -> list[Test]:
        """The token tests `t` stands for; codes of a system in `t.implied` are searched without a system
        (`code` elements store none: their binding implies it)."""
        if t.mode == "in":
            codes = await self.expand(t.value, 0)
        else:
            system, code = t.value.split("|", 1)
            codes = {(system, c) for c in await self.related(system, code, t.mode)}
        return _as_tests({("" if system in t.implied else system, code) for system, code in codes})

    async def _find(self, rtype: str, canonical: str) -> dict[str, Any] | None:
        """The live `rtype` resource whose canonical `url` (with `|version`: and version) is `canonical`,
        the latest updated if several; or the one `canonical` names as `Type/id` (or as an absolute URL on
        this server's base)."""
        url, _, version = canonical.partition("|")
        clauses: list[Clause] = [ParamClause("uri", "url", [UriTest("eq", url)])]
        if version:
            clauses.append(ParamClause("token", "version", [TokenTest(None, version)]))
        rows = await self.store.search(self.conn, Criteria([rtype], clauses), None,
                                       [SortKey("_lastUpdated", "_lastUpdated", descending=True)], 1)
        if rows:
            return rows[0].content
        ref = parse_reference(canonical, self.base_url)
        if ref is not None and ref.resource_type == rtype:
            found = await self.store.get_many(self.conn, [(rtype, ref.id)])
            return found[0].content if found else None
        return None

    async def expand(self, canonical: str, depth: int) -> set[Code]:
        """The codes of the value set `canonical` (`url`, `url|version`, `ValueSet/id`)."""
        if depth > MAX_DEPTH:
            raise Invalid(f"Value set {canonical} includes value sets more than {MAX_DEPTH} levels deep")
        vs = await self._find("ValueSet", canonical)
        if vs is None:
            raise Invalid(f"Value set '{canonical}' is not stored on this server; :in and :not-in need a ValueSet "
                          "that this server holds")
        contains = (vs.get("expansion") or {}).get("contains")
        if contains:
            codes = set(_contained(contains))
        else:
            compose = vs.get("compose") or {}
            if not compose.get("include"):
                raise Invalid(f"Value set '{canonical}' has neither an expansion nor compose.include to expand")
            codes = set()
            for inc in compose["include"]:
                codes |= await self._part(inc, canonical, depth)
            for exc in compose.get("exclude") or []:
                removed = await self._part(exc, canonical, depth)
                whole = {s for s, c in removed if c is None}
                codes = {(s, c) for s, c in codes if s not in whole and (s, c) not in removed}
        if len(codes) > MAX_CODES:
            raise Invalid(f"Value set '{canonical}' has more than {MAX_CODES} codes, too many to search by")
        return codes

    async def _part(self, inc: dict[str, Any], canonical: str, depth: int) -> set[Code]:
        """One compose.include (or exclude): its system's concepts or filters, intersected with its value sets."""
        system = inc.get("system")
        out: set[Code] | None = None
        if isinstance(system, str):
            if inc.get("concept"):
                out = {(system, c["code"]) for c in inc["concept"] if isinstance(c, dict) and c.get("code")}
            elif inc.get("filter"):
                out = await self._filtered(system, inc["filter"], canonical)
            else:
                cs = await self._find("CodeSystem", system)
                out = {(system, c) for c in _hierarchy(cs)[0]} if cs and cs.get("concept") else {(system, None)}
        for other in inc.get("valueSet") or []:
            nested = await self.expand(other, depth + 1)
            out = nested if out is None else _intersect(out, nested)
        return out or set()

    async def _filtered(self, system: str, filters: list[dict[str, Any]], canonical: str) -> set[Code]:
        result: set[str] | None = None
        for f in filters:
            op, prop, value = f.get("op"), f.get("property"), f.get("value")
            if not isinstance(value, str):
                raise Invalid(f"Value set '{canonical}': a filter on {system} has no value")
            if op in ("is-a", "descendent-of") or (op == "=" and prop == "concept"):
                codes = await self.related(system, value, "below")
                if op == "descendent-of":
                    codes.discard(value)
                if op == "=":
                    codes = {value}
            elif op == "in" and prop == "concept":
                codes = {c.strip() for c in value.split(",") if c.strip()}
            else:
                raise Invalid(f"Value set '{canonical}': the filter '{prop} {op} {value}' on {system} is not "
                              "supported here (is-a, descendent-of, in and = on the concept property are)")
            result = codes if result is None else result & codes
        return {(system, c) for c in result or set()}

    async def related(self, system: str, code: str, mode: str) -> set[str]:
        """`code` with every code it subsumes (`below`) or that subsumes it (`above`) in the CodeSystem
        `system` stored on this server."""
        cs = await self._find("CodeSystem", system)
        if cs is None:
            raise Invalid(f"Code system '{system}' is not stored on this server; :below and :above need its "
                          "CodeSystem with the concept hierarchy")
        known, parents = _hierarchy(cs)
        if code not in known:
            raise Invalid(f"Code system '{system}' has no code '{code}'")
        links: dict[str, set[str]] = parents
        if mode == "below":
            links = defaultdict(set)
            for child, ps in parents.items():
                for p in ps:
                    links[p].add(child)
        out, todo = {code}, [code]
        while todo:
            for nxt in links.get(todo.pop(), ()):
                if nxt not in out:
                    out.add(nxt)
                    todo.append(nxt)
        return out


def _contained(contains: list[Any]) -> Iterator[Code]:
    for c in contains:
        if not isinstance(c, dict):
            continue
        if isinstance(c.get("system"), str) and isinstance(c.get("code"), str) and not c.get("abstract"):
            yield c["system"], c["code"]
        yield from _contained(c.get("contains") or [])


def _hierarchy(cs: dict[str, Any] | None) -> tuple[set[str], dict[str, set[str]]]:
    """(every code, parents by code) of a CodeSystem: nested concepts and `parent`/`child` properties."""
    known: set[str] = set()
    parents: dict[str, set[str]] = defaultdict(set)

    def walk(concepts: list[Any], parent: str | None) -> None:
        for c in concepts:
            if not isinstance(c, dict) or not isinstance(c.get("code"), str):
                continue
            code = c["code"]
            known.add(code)
            if parent is not None:
                parents[code].add(parent)
            for prop in c.get("property") or []:
                if isinstance(prop, dict) and isinstance(prop.get("valueCode"), str):
                    if prop.get("code") == "parent":
                        parents[code].add(prop["valueCode"])
                    elif prop.get("code") == "child":
                        parents[prop["valueCode"]].add(code)
            walk(c.get("concept") or [], code)

    walk((cs or {}).get("concept") or [], None)
    return known, parents


def _intersect(a: set[Code], b: set[Code]) -> set[Code]:
    """Codes in both; a whole system (code None) on one side keeps the other side's codes of that system."""
    whole_a = {s for s, c in a if c is None}
    whole_b = {s for s, c in b if c is None}
    return {(s, c) for s, c in a if (s, c) in b or s in whole_b} | {(s, c) for s, c in b if s in whole_a}
