"""SEARCH_TEXT_INDEX=false over real HTTP (SQLite and PostgreSQL): no word rows are written, `_text` and
`_content` are refused with 400 wherever a search runs (type search, `_filter`, chains, conditional
criteria; strict or lenient), and the CapabilityStatement leaves them out."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from fhirvault.config import Settings
from fhirvault.fhir.search_index import search_index
from tests.support.searching import FHIR, create, found, refused
from tests.support.server import FhirApi, ServerProcess

BASE = "http://fhirvault.invalid/fhir/R4"
NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Severe bronchitis</p></div>'}


def test_the_word_index_is_off_unless_asked_for() -> None:
    """The documented default (README "Configuration"): `fhirvault serve` writes no word rows."""
    assert Settings.model_fields["search_text_index"].default is False


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server_off(request: pytest.FixtureRequest, server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(request.param, search_text_index=False)


def _word_rows(server: ServerProcess, rid: str) -> dict[str, int]:
    """Rows of the Condition `rid` in search_strings by param, read straight from the server's database."""
    sql = "SELECT param, COUNT(*) FROM search_strings WHERE resource_type = 'Condition' AND id = {} GROUP BY param"
    url = server.env.get("FHIRVAULT_DATABASE_URL", "")
    if url:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            return dict(conn.execute(sql.format("%s"), (rid,)).fetchall())  # type: ignore[arg-type]
    with sqlite3.connect(server.data_dir / "fhirvault.db") as conn:
        return dict(conn.execute(sql.format("?"), (rid,)).fetchall())


def test_no_word_rows_and_text_search_refused(server_off: ServerProcess) -> None:
    t = uuid.uuid4().hex[:10]
    with server_off.api() as api:
        cond = create(api, {"resourceType": "Condition", "identifier": [{"system": "urn:off", "value": t}],
                            "subject": {"reference": "Patient/x"}, "text": NARRATIVE,
                            "code": {"text": "Bronchitis, acute"}})
        rows = _word_rows(server_off, cond["id"])
        assert "_text" not in rows and "_content" not in rows
        assert rows.get("code:text", 0) >= 1  # the other string rows are written as before
        assert found(api, "/Condition", {"identifier": f"urn:off|{t}"}) == [cond["id"]]
        for params in ({"_content": "bronch"}, {"_text": "severe"}, {"identifier": f"urn:off|{t}", "_content": "x"},
                       {"_filter": "_content co 'bronch'"}, {"_filter": "identifier eq 'x' or _text eq 'severe'"},
                       {"subject:Patient._content": "smith"}):
            refused(api, "/Condition", params, "text search off")
        r = api.get("/Condition", params={"_text": "severe"}, headers={"Prefer": "handling=lenient"})
        assert r.status_code == 400 and "text search off" in r.text
        r = api.get("/", params={"_type": "Condition", "_content": "bronch"})
        assert r.status_code == 400 and "text search off" in r.text
        # conditional create: refused, and nothing is created
        r = api.post("/Condition", json={"resourceType": "Condition", "subject": {"reference": "Patient/x"},
                                         "identifier": [{"system": "urn:off", "value": t}]},
                     headers={**FHIR, "If-None-Exist": "_content=bronch"})
        assert r.status_code == 400 and "text search off" in r.text
        assert found(api, "/Condition", {"identifier": f"urn:off|{t}"}) == [cond["id"]]


def test_capability_statement_leaves_text_search_out(server_off: ServerProcess, api: FhirApi) -> None:
    def names(statement: dict[str, Any], rtype: str) -> set[str]:
        entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == rtype)
        return {p["name"] for p in entry["searchParam"]}

    with server_off.api() as off:
        statement = off.get("/metadata").json()
    for rtype in ("Condition", "Patient", "Binary"):
        assert not {"_text", "_content"} & names(statement, rtype)
        assert "_filter" in names(statement, rtype)
    on = api.get("/metadata").json()  # the default server keeps them
    assert {"_text", "_content"} <= names(on, "Condition")


def test_index_rows_without_words() -> None:
    body = {"resourceType": "Condition", "id": "c", "text": NARRATIVE, "code": {"text": "Bronchitis"},
            "subject": {"reference": "Patient/x"}}
    with_words, without = search_index(body, BASE), search_index(body, BASE, text=False)
    assert {r for r in with_words.strings if r[0] in ("_text", "_content")}
    assert without.strings == {r for r in with_words.strings if r[0] not in ("_text", "_content")}
    assert without.tokens == with_words.tokens and without.refs == with_words.refs
