"""Helpers of the search tests: create a resource, the ids a search matches, a refused search."""

from __future__ import annotations

from typing import Any

import httpx

FHIR = {"Content-Type": "application/fhir+json"}
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def create(api: httpx.Client, resource: dict) -> dict:
    """POST the resource to its type; asserts 201 and returns what the server stored."""
    r = api.post(f"/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    return r.json()


def found(api: httpx.Client, path: str, params: Any) -> list[str]:
    """The sorted ids of the matches (search.mode match) of GET `path` with `params`; asserts 200."""
    r = api.get(path, params=params)
    assert r.status_code == 200, r.text
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match")


def refused(api: httpx.Client, path: str, params: Any, *words: str) -> None:
    """Asserts GET `path` with `params` is a 400 OperationOutcome whose text holds every one of `words`."""
    r = api.get(path, params=params)
    assert r.status_code == 400, (params, r.text)
    assert r.json()["resourceType"] == "OperationOutcome"
    for w in words:
        assert w in r.text, (w, r.text)
