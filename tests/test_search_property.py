"""Property: for random Observations and random criteria, the server's SQL search returns exactly what an
in-memory evaluation of the same criteria finds, reading the values with fhirpathpy (FHIR R4 3.1.1.4)."""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from fhirpathpy import evaluate as fhirpath
from fhirpathpy.models import models
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.server import FhirApi, ServerProcess

FHIR = {"Content-Type": "application/fhir+json"}
SYSTEMS = ["urn:s1", "urn:s2", None]
CODES = ["A", "B", "C"]
DAYS = ["2024-02-29", "2024-12-31", "2025-01-01", "2025-03-04", "2025-03-05", "2025-07-15"]
VALUES = [0.5, 1, 1.5, 5.4, 10, 99.9, 100]
UNITS = ["mg", "g"]
PATIENTS = ["Patient/p1", "Patient/p2", "Patient/p3"]
PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]


def random_observation(rng: random.Random, marker: str) -> dict[str, Any]:
    o: dict[str, Any] = {"resourceType": "Observation", "status": "final",
                         "identifier": [{"system": "urn:prop", "value": marker}],
                         "code": {"coding": [{"code": rng.choice(CODES), **(
                             {"system": s} if (s := rng.choice(SYSTEMS)) else {})} for _ in range(rng.randint(1, 2))]}}
    shape = rng.random()
    if shape < 0.4:
        o["effectiveDateTime"] = rng.choice([*DAYS, "2025-03", "2024", "2025-03-04T10:30:00Z"])
    elif shape < 0.7:
        a, b = sorted(rng.sample(DAYS, 2))
        o["effectivePeriod"] = {"start": a, "end": b} if rng.random() < 0.8 else {"start": a}
    if rng.random() < 0.7:
        o["valueQuantity"] = {"value": rng.choice(VALUES), "system": "http://unitsofmeasure.org",
                              "code": rng.choice(UNITS)}
    if rng.random() < 0.8:
        o["subject"] = {"reference": rng.choice(PATIENTS)}
    return o


# -- the in-memory side -------------------------------------------------------------------------------
def date_range(text: str) -> tuple[datetime, datetime]:
    parts = text.replace("Z", "").split("T")
    ymd = [int(x) for x in parts[0].split("-")]
    if len(parts) == 2:
        h, m, s = (int(x) for x in parts[1].split(":"))
        start = datetime(*ymd, h, m, s, tzinfo=UTC)  # type: ignore[misc]
        return start, datetime.fromtimestamp(start.timestamp() + 1, UTC)
    if len(ymd) == 1:
        return datetime(ymd[0], 1, 1, tzinfo=UTC), datetime(ymd[0] + 1, 1, 1, tzinfo=UTC)
    if len(ymd) == 2:
        y, m = ymd
        return datetime(y, m, 1, tzinfo=UTC), datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
    start = datetime(*ymd, tzinfo=UTC)  # type: ignore[misc]
    return start, datetime.fromtimestamp(start.timestamp() + 86400, UTC)


def evaluate(resource: dict, expression: str, _context: dict) -> list[Any]:
    """fhirpathpy with the R4 model (choice types), on a copy (it annotates what it reads)."""
    return list(fhirpath(copy.deepcopy(resource), expression, {}, models["r4"]))


LOW, HIGH = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)


def date_values(o: dict) -> list[tuple[datetime, datetime]]:
    out = []
    for v in evaluate(o, "Observation.effective", {}):
        if isinstance(v, str):
            out.append(date_range(v))
        elif isinstance(v, dict):
            out.append((date_range(v["start"])[0] if "start" in v else LOW,
                        date_range(v["end"])[1] if "end" in v else HIGH))
    return out


def range_match(prefix: str, lo: Any, hi: Any, s: Any, e: Any) -> bool:
    inside = lo >= s and hi <= e
    return {"eq": inside, "ne": not inside, "gt": hi > e, "lt": lo < s, "ge": hi > s, "le": lo < e,
            "sa": lo >= e, "eb": hi <= s}[prefix]


def number_match(prefix: str, v: Decimal, text: str) -> bool:
    n = Decimal(text)
    half = Decimal(5) * Decimal(10) ** (n.as_tuple().exponent - 1)  # type: ignore[operator]
    return {"eq": n - half <= v < n + half, "ne": not (n - half <= v < n + half), "gt": v > n, "lt": v < n,
            "ge": v >= n, "le": v <= n, "sa": v >= n + half, "eb": v < n - half}[prefix]


def split_prefix(value: str) -> tuple[str, str]:
    return (value[:2], value[2:]) if value[:2] in PREFIXES and value[:2] else ("eq", value)


def matches(o: dict, name: str, value: str) -> bool:
    """One criterion on one Observation, the OR of its comma-separated values."""
    alternatives = value.split(",")
    if name in ("code", "code:not"):
        codings = [(c.get("system"), c["code"]) for c in evaluate(o, "Observation.code.coding", {})]

        def token(v: str) -> bool:
            if "|" not in v:
                return any(c == v for _s, c in codings)
            system, code = v.split("|", 1)
            if system == "":
                return any(s is None and c == code for s, c in codings)
            return any(s == system and (not code or c == code) for s, c in codings)

        hit = any(token(v) for v in alternatives)
        return not hit if name == "code:not" else hit
    if name == "date":
        ranges = date_values(o)
        return any(range_match(split_prefix(v)[0], lo, hi, *date_range(split_prefix(v)[1]))
                   for v in alternatives for lo, hi in ranges)
    if name == "value-quantity":
        quantities = evaluate(o, "Observation.value.ofType(Quantity)", {})
        out = False
        for v in alternatives:
            number, _, unit = v.partition("||")
            prefix, text = split_prefix(number)
            out = out or any(number_match(prefix, Decimal(str(q["value"])), text) and (not unit or q["code"] == unit)
                             for q in quantities)
        return out
    if name == "subject":
        return any(r.get("reference") in alternatives for r in evaluate(o, "Observation.subject", {}))
    if name == "value-quantity:missing":
        return (not evaluate(o, "Observation.value.ofType(Quantity)", {})) == (value == "true")
    raise AssertionError(name)


def token_value() -> st.SearchStrategy[str]:
    code = st.sampled_from(CODES)
    return st.one_of(code, st.builds(lambda s, c: f"{s}|{c}", st.sampled_from(["urn:s1", "urn:s2"]), code),
                     st.builds(lambda c: f"|{c}", code), st.builds(lambda s: f"{s}|", st.sampled_from(["urn:s1"])))


def date_value() -> st.SearchStrategy[str]:
    when = st.sampled_from([*DAYS, "2025", "2024", "2025-03", "2025-03-04T10:30:00Z"])
    return st.builds(lambda p, d: p + d, st.sampled_from(PREFIXES), when)


def quantity_value() -> st.SearchStrategy[str]:
    number = st.sampled_from(["0.5", "1", "1.5", "5.4", "5", "10", "100", "99.9", "50"])
    return st.builds(lambda p, n, u: p + n + u, st.sampled_from(PREFIXES), number,
                     st.sampled_from(["", "||mg", "||g"]))


def criterion() -> st.SearchStrategy[tuple[str, str]]:
    def ored(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.lists(values, min_size=1, max_size=2).map(",".join)

    return st.one_of(
        st.tuples(st.sampled_from(["code", "code:not"]), ored(token_value())),
        st.tuples(st.just("date"), ored(date_value())),
        st.tuples(st.just("value-quantity"), ored(quantity_value())),
        st.tuples(st.just("subject"), ored(st.sampled_from(PATIENTS))),
        st.tuples(st.just("value-quantity:missing"), st.sampled_from(["true", "false"])),
    )


@pytest.fixture(scope="module")
def population(server: ServerProcess) -> Iterator[tuple[FhirApi, str, list[dict]]]:
    marker = uuid.uuid4().hex
    rng = random.Random(marker)
    with server.api() as api:
        made = []
        for _ in range(40):
            r = api.post("/Observation", json=random_observation(rng, marker), headers=FHIR)
            assert r.status_code == 201, r.text
            made.append(r.json())
        yield api, marker, made


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(criteria=st.lists(criterion(), min_size=1, max_size=2))
def test_sql_search_equals_in_memory_evaluation(population: tuple[FhirApi, str, list[dict]],
                                                criteria: list[tuple[str, str]]) -> None:
    api, marker, made = population
    r = api.get("/Observation", params=[("identifier", f"urn:prop|{marker}"), *criteria, ("_count", "100")])
    assert r.status_code == 200, r.text
    got = sorted(e["resource"]["id"] for e in r.json().get("entry", []))
    expected = sorted(o["id"] for o in made if all(matches(o, n, v) for n, v in criteria))
    assert got == expected, criteria
