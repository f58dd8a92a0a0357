"""Who may do what: every interaction against every kind of caller, by HTTP status."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.security_support import bearer, client_token, foreign_signed, tampered
from tests.support.server import ServerProcess

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
DATA = base64.b64encode(b"scan bytes").decode()

CALLERS = ["admin", "reader", "binary_only", "patient_a", "patient_b",
           "disabled", "expired", "foreign_key", "tampered", "no_token"]
UNAUTHENTICATED = {"disabled", "expired", "foreign_key", "tampered", "no_token"}


@dataclass
class World:
    server: ServerProcess
    expired_server: ServerProcess
    tokens: dict[str, str | None]
    ids: dict[str, str] = field(default_factory=dict)

    def client(self, caller: str) -> httpx.Client:
        target = self.expired_server if caller == "expired" else self.server
        return httpx.Client(base_url=target.base, headers={**FHIR, **bearer(self.tokens[caller])}, timeout=60)

    def admin(self) -> httpx.Client:
        return self.client("admin")


@pytest.fixture(scope="module")
def world(server: ServerProcess, server_factory: Callable[..., ServerProcess]) -> World:
    expired_server = server_factory("sqlite", token_lifetime=0)
    admin_token = server.auth_headers()["Authorization"].split(" ", 1)[1]
    w = World(server, expired_server, {"admin": admin_token})
    with w.admin() as api:
        for name in ("a", "b"):
            w.ids[f"patient_{name}"] = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        a = w.ids["patient_a"]
        w.ids["obs"] = api.post("/Observation", json=observation(a)).json()["id"]
        w.ids["binary_a"] = api.post("/Binary", json=binary(f"Patient/{a}")).json()["id"]
        w.ids["binary_free"] = api.post("/Binary", json=binary(None)).json()["id"]
    w.tokens["reader"] = client_token(server, "reader", "system/*.rs")
    w.tokens["binary_only"] = client_token(server, "binary", "system/Binary.cruds")
    w.tokens["patient_a"] = client_token(server, "pa", "patient/*.cruds", f"Patient/{a}")
    w.tokens["patient_b"] = client_token(server, "pb", "patient/*.cruds", f"Patient/{w.ids['patient_b']}")
    disabled = server.create_client("soon disabled", "system/*.cruds")
    w.tokens["disabled"] = server.token(disabled["client_id"], disabled["client_secret"])
    assert server.cli("clients", "disable", disabled["client_id"]).returncode == 0
    w.tokens["expired"] = expired_server.auth_headers()["Authorization"].split(" ", 1)[1]
    w.tokens["foreign_key"] = foreign_signed(admin_token)
    w.tokens["tampered"] = tampered(w.tokens["reader"] or "")
    w.tokens["no_token"] = None
    return w


def observation(patient_id: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
            "subject": {"reference": f"Patient/{patient_id}"}}


def binary(context: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Binary", "contentType": "application/pdf", "data": DATA}
    if context:
        out["securityContext"] = {"reference": context}
    return out


# -- interactions: each returns the status that matters (a batch entry's own status) ------------
def do_create(w: World, c: httpx.Client) -> int:
    return c.post("/Observation", json=observation(w.ids["patient_a"])).status_code


def do_read(w: World, c: httpx.Client) -> int:
    return c.get(f"/Observation/{w.ids['obs']}").status_code


def do_vread(w: World, c: httpx.Client) -> int:
    return c.get(f"/Observation/{w.ids['obs']}/_history/1").status_code


def do_update(w: World, c: httpx.Client) -> int:
    return c.put(f"/Observation/{w.ids['obs']}", json={**observation(w.ids["patient_a"]), "id": w.ids["obs"]}
                 ).status_code


def do_delete(w: World, c: httpx.Client) -> int:
    with w.admin() as admin:
        fresh = admin.post("/Observation", json=observation(w.ids["patient_a"])).json()["id"]
    status = c.delete(f"/Observation/{fresh}").status_code
    with w.admin() as admin:  # the resource is gone exactly when the delete said so
        assert admin.get(f"/Observation/{fresh}").status_code == (410 if status == 204 else 200)
    return status


def do_search(w: World, c: httpx.Client) -> int | tuple[int, int]:
    r = c.get("/Observation", params={"_id": w.ids["obs"]})
    return (200, len(r.json().get("entry", []))) if r.status_code == 200 else r.status_code


def do_history(w: World, c: httpx.Client) -> int:
    return c.get(f"/Observation/{w.ids['obs']}/_history").status_code


def do_batch_entry(w: World, c: httpx.Client) -> int:
    r = c.post("", json={"resourceType": "Bundle", "type": "batch",
                         "entry": [{"request": {"method": "GET", "url": f"Observation/{w.ids['obs']}"}}]})
    if r.status_code != 200:
        return r.status_code
    return int(r.json()["entry"][0]["response"]["status"].split()[0])


def do_binary_read(w: World, c: httpx.Client) -> int:
    return c.get(f"/Binary/{w.ids['binary_a']}").status_code


def do_binary_write(w: World, c: httpx.Client) -> int:
    return c.post("/Binary", json=binary(f"Patient/{w.ids['patient_a']}")).status_code


def do_free_binary_read(w: World, c: httpx.Client) -> int:
    return c.get(f"/Binary/{w.ids['binary_free']}").status_code


def do_free_binary_write(w: World, c: httpx.Client) -> int:
    return c.post("/Binary", json=binary(None)).status_code


INTERACTIONS: dict[str, Callable[[World, httpx.Client], Any]] = {
    "create": do_create, "read": do_read, "vread": do_vread, "update": do_update, "delete": do_delete,
    "search": do_search, "history": do_history, "batch_entry": do_batch_entry,
    "binary_read": do_binary_read, "binary_write": do_binary_write,
    "free_binary_read": do_free_binary_read, "free_binary_write": do_free_binary_write,
}

# Expected statuses of the authenticated callers; every unauthenticated caller gets 401 everywhere.
# 403: the scopes lack the interaction's letter for the type (checked before any lookup), or the
# resource sent would be outside the caller's reach. 404: the stored resource is outside what the
# caller may read (another patient's compartment, a securityContext it may not read).
# binary_* use a Binary whose securityContext is Patient A; free_binary_* one without securityContext.
EXPECTED: dict[str, dict[str, Any]] = {
    #                    admin      reader     binary_only patient_a  patient_b
    "create":           dict(admin=201, reader=403, binary_only=403, patient_a=201, patient_b=403),
    "read":             dict(admin=200, reader=200, binary_only=403, patient_a=200, patient_b=404),
    "vread":            dict(admin=200, reader=200, binary_only=403, patient_a=200, patient_b=404),
    "update":           dict(admin=200, reader=403, binary_only=403, patient_a=200, patient_b=404),
    "delete":           dict(admin=204, reader=403, binary_only=403, patient_a=204, patient_b=404),
    "search":           dict(admin=(200, 1), reader=(200, 1), binary_only=403, patient_a=(200, 1),
                             patient_b=(200, 0)),
    "history":          dict(admin=200, reader=200, binary_only=403, patient_a=200, patient_b=404),
    "batch_entry":      dict(admin=200, reader=200, binary_only=403, patient_a=200, patient_b=404),
    "binary_read":      dict(admin=200, reader=200, binary_only=404, patient_a=200, patient_b=404),
    "binary_write":     dict(admin=201, reader=403, binary_only=403, patient_a=201, patient_b=403),
    "free_binary_read": dict(admin=200, reader=200, binary_only=200, patient_a=404, patient_b=404),
    "free_binary_write": dict(admin=201, reader=403, binary_only=201, patient_a=403, patient_b=403),
}


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("interaction", list(INTERACTIONS))
def test_interaction_by_caller(world: World, interaction: str, caller: str) -> None:
    with world.client(caller) as c:
        got = INTERACTIONS[interaction](world, c)
    expected = 401 if caller in UNAUTHENTICATED else EXPECTED[interaction][caller]
    assert got == expected, f"{interaction} by {caller}: got {got}, expected {expected}"


@pytest.mark.parametrize("caller", sorted(UNAUTHENTICATED))
def test_unauthenticated_is_401_with_bearer_challenge_and_outcome(world: World, caller: str) -> None:
    with world.client(caller) as c:
        r = c.get(f"/Patient/{world.ids['patient_a']}")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    issue = r.json()["issue"][0]
    assert r.json()["resourceType"] == "OperationOutcome" and issue["code"] in ("login", "security")
    token = world.tokens[caller]
    assert token is None or token not in r.text


def test_missing_scope_is_403_naming_the_scope(world: World) -> None:
    with world.client("reader") as c:
        r = c.post("/Observation", json=observation(world.ids["patient_a"]))
    assert r.status_code == 403
    assert "system/Observation.c" in r.json()["issue"][0]["diagnostics"]
    with world.client("patient_a") as c:  # a patient-context caller is told its patient/ scope
        r = c.post("/Observation", json=observation(world.ids["patient_b"]))
    assert r.status_code == 403


def test_patient_b_search_of_observations_never_returns_patient_a(world: World) -> None:
    with world.client("patient_b") as c:
        r = c.get("/Observation", params={"subject": f"Patient/{world.ids['patient_a']}"})
        assert r.status_code == 200 and r.json().get("entry", []) == []
        r = c.get("/Observation", params={"_summary": "count"})
        assert r.json()["total"] == 0


def test_public_paths_need_no_token(world: World) -> None:
    s = world.server
    assert httpx.get(f"{s.base}/metadata").status_code == 200
    for url in (f"{s.url}/.well-known/smart-configuration", f"{s.base}/.well-known/smart-configuration"):
        r = httpx.get(url)
        assert r.status_code == 200 and r.json()["token_endpoint"] == f"{s.url}/oauth2/token"
    assert httpx.get(f"{s.base}/Patient").status_code == 401
