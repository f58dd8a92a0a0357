"""Decimals keep the precision they were written with (R4 datatypes.html#decimal: "the precision of the
decimal value has significance"): `1.50` is stored and answered as `1.50` on every path, on SQLite and
PostgreSQL. Bodies are sent and read as text, because a JSON library would turn them into floats."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}

# Written as text: each number here is one a float would write back differently.
NUMBERS = ["1.50", "0.10", "1e2", "2.5E-3", "0.00001", "123456789.123456789012345", "1.000"]


def observation_text(identifier: str, value: str, extra: str = "") -> str:
    """An Observation with `value` as its valueQuantity, spelled exactly as given."""
    return ('{"resourceType":"Observation","status":"final","code":{"text":"weight"},'
            f'"identifier":[{{"system":"urn:test:dec","value":"{identifier}"}}],'
            f'"valueQuantity":{{"value":{value},"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}'
            f'{extra}}}')


def quantity_value(body: str) -> str:
    """The literal text of the first valueQuantity.value in a JSON body."""
    found = re.search(r'"valueQuantity":\s*\{[^}]*?"value":\s*([-0-9.eE+]+)', body)
    assert found, body
    return found.group(1)


def create(api: FhirApi, value: str) -> tuple[str, str]:
    ident = uuid.uuid4().hex
    r = api.post("/Observation", content=observation_text(ident, value), headers=FHIR)
    assert r.status_code == 201, r.text
    return r.json()["id"], ident


def test_create_read_vread_keep_each_number_as_written(api: FhirApi) -> None:
    for value in NUMBERS:
        r = api.post("/Observation", content=observation_text(uuid.uuid4().hex, value), headers=FHIR)
        assert r.status_code == 201, r.text
        assert quantity_value(r.text) == value
        rid, vid = r.json()["id"], r.json()["meta"]["versionId"]
        assert quantity_value(api.get(f"/Observation/{rid}").text) == value
        assert quantity_value(api.get(f"/Observation/{rid}/_history/{vid}").text) == value


def test_search_history_and_pretty_answers_keep_the_precision(api: FhirApi) -> None:
    rid, ident = create(api, "1.50")
    page = api.get("/Observation", params={"identifier": f"urn:test:dec|{ident}"})
    assert page.json()["total"] == 1 and quantity_value(page.text) == "1.50"
    assert quantity_value(api.get(f"/Observation/{rid}/_history").text) == "1.50"
    pretty = api.get(f"/Observation/{rid}", params={"_pretty": "true"})
    assert "\n" in pretty.text and quantity_value(pretty.text) == "1.50"
    elements = api.get(f"/Observation/{rid}", params={"_elements": "valueQuantity"})
    assert quantity_value(elements.text) == "1.50"


def test_search_by_value_finds_a_decimal_kept_as_written(api: FhirApi) -> None:
    _, ident = create(api, "7.250")
    for criterion in ("7.25", "7.250", "ge7.2"):
        page = api.get("/Observation", params={"identifier": f"urn:test:dec|{ident}", "value-quantity": criterion})
        assert page.json()["total"] == 1, (criterion, page.text)
    page = api.get("/Observation", params={"identifier": f"urn:test:dec|{ident}", "value-quantity": "7.4"})
    assert page.json()["total"] == 0


def test_update_keeps_the_new_precision(api: FhirApi) -> None:
    rid, ident = create(api, "1.50")
    body = json.loads(observation_text(ident, "0"))
    text = json.dumps({**body, "id": rid}).replace('"value": 0,', '"value": 2.500,')
    r = api.put(f"/Observation/{rid}", content=text, headers=FHIR)
    assert r.status_code == 200, r.text
    assert quantity_value(api.get(f"/Observation/{rid}").text) == "2.500"


def test_every_patch_format_keeps_decimals_it_writes_and_leaves(api: FhirApi) -> None:
    rid, _ = create(api, "1.50")
    # JSON Patch (RFC 6902): a new value, and another element added next to the one kept
    r = api.patch(f"/Observation/{rid}", headers={"Content-Type": "application/json-patch+json"},
                  content='[{"op":"replace","path":"/valueQuantity/value","value":3.10}]')
    assert r.status_code == 200, r.text
    assert quantity_value(r.text) == "3.10"
    # JSON Merge Patch (RFC 7386) that changes something else: the stored decimal is untouched
    r = api.patch(f"/Observation/{rid}", headers={"Content-Type": "application/merge-patch+json"},
                  content='{"status":"amended"}')
    assert r.status_code == 200, r.text
    assert quantity_value(r.text) == "3.10"
    # FHIRPath Patch (R4 fhirpatch.html), the value carried as a Parameters valueDecimal
    fhirpath = ('{"resourceType":"Parameters","parameter":[{"name":"operation","part":['
                '{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Observation.valueQuantity.value"},'
                '{"name":"value","valueDecimal":4.200}]}]}')
    r = api.patch(f"/Observation/{rid}", headers=FHIR, content=fhirpath)
    assert r.status_code == 200, r.text
    assert quantity_value(api.get(f"/Observation/{rid}").text) == "4.200"


def test_transaction_and_batch_entries_keep_the_precision(api: FhirApi) -> None:
    for kind in ("transaction", "batch"):
        ident = uuid.uuid4().hex
        entry = (f'{{"fullUrl":"urn:uuid:{uuid.uuid4()}","resource":{observation_text(ident, "9.90")},'
                 '"request":{"method":"POST","url":"Observation"}}')
        bundle = f'{{"resourceType":"Bundle","type":"{kind}","entry":[{entry}]}}'
        r = api.post("", content=bundle, headers={**FHIR, "Prefer": "return=representation"})
        assert r.status_code == 200, r.text
        assert quantity_value(r.text) == "9.90"
        page = api.get("/Observation", params={"identifier": f"urn:test:dec|{ident}"})
        assert quantity_value(page.text) == "9.90", kind


def test_a_value_with_more_digits_than_a_double_is_not_rounded(api: FhirApi) -> None:
    digits = "3.14159265358979323846264338327950288"
    rid, _ = create(api, digits)
    assert quantity_value(api.get(f"/Observation/{rid}").text) == digits


def test_numbers_inside_strings_are_left_alone(api: FhirApi) -> None:
    """Text that looks like such a number inside a string (a note, a time with milliseconds) is text."""
    note = ',"note":[{"text":"dose:1.50,"}],"issued":"2024-01-02T03:04:05.120Z"'
    r = api.post("/Observation", content=observation_text(uuid.uuid4().hex, "1.5", note), headers=FHIR)
    assert r.status_code == 201, r.text
    read: dict[str, Any] = api.get(f"/Observation/{r.json()['id']}").json()
    assert read["note"][0]["text"] == "dose:1.50," and read["issued"] == "2024-01-02T03:04:05.120Z"
    assert quantity_value(api.get(f"/Observation/{r.json()['id']}").text) == "1.5"
