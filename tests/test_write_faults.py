"""An unexpected fault halfway through a write (after its version row is inserted, before the commit),
over real HTTP on SQLite and PostgreSQL: the write leaves nothing behind and its answer is a 500
OperationOutcome that names no internals; in a batch only that entry is a 500 (R4 http.html#brules: the
entries before it are written and the client must learn which), in a transaction the whole Bundle is
rolled back. The fault is injected by tests/support/faults (a server started with it on PYTHONPATH)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import require_postgres
from tests.support.faults.sitecustomize import FAULT_MARK
from tests.support.server import FhirApi, ServerProcess, postgres_database, settings_env

FAULTS = str(Path(__file__).parent / "support" / "faults")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def faulty(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ExitStack() as stack:
        settings: dict[str, object] = {}
        if request.param == "postgres":
            require_postgres()
            settings["database_url"] = stack.enter_context(postgres_database())
        env = {**settings_env(**settings), "PYTHONPATH": FAULTS}
        server = ServerProcess(tmp_path_factory.mktemp(f"faults-{request.param}"), env).start()
        stack.callback(server.stop)
        yield server


@pytest.fixture()
def api(faulty: ServerProcess) -> Iterator[FhirApi]:
    with faulty.api() as client:
        yield client


def patient(tag: str, *, faulty: bool = False) -> dict[str, object]:
    ids = [{"system": "urn:faults", "value": tag}]
    if faulty:
        ids.append({"system": "urn:faults", "value": FAULT_MARK})
    return {"resourceType": "Patient", "identifier": ids}


def stored(api: FhirApi, tag: str) -> int:
    r = api.get("/Patient", params={"identifier": f"urn:faults|{tag}", "_summary": "count"})
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def test_a_single_write_that_fails_halfway_leaves_nothing(api: FhirApi, faulty: ServerProcess) -> None:
    """A 500 OperationOutcome on a connection that stays open: the 500 used to be sent and the connection
    then closed under the client (connection reset), with the traceback logged twice."""
    tag = uuid.uuid4().hex
    r = api.post("/Patient", json=patient(tag, faulty=True))
    assert r.status_code == 500 and r.json()["resourceType"] == "OperationOutcome"
    assert "injected" not in r.text and "Traceback" not in r.text
    assert stored(api, tag) == 0
    put = api.put(f"/Patient/{tag[:20]}", json={**patient(tag, faulty=True), "id": tag[:20]})
    assert put.status_code == 500
    assert api.get(f"/Patient/{tag[:20]}").status_code == 404
    # the server goes on serving, and the same resource without the fault is stored once
    assert api.post("/Patient", json=patient(tag)).status_code == 201
    assert stored(api, tag) == 1
    log = faulty.log()
    assert "injected fault" in log  # logged for the operator, with its traceback, once
    assert "Exception in ASGI application" not in log


def test_a_batch_entry_that_fails_halfway_is_that_entrys_500(api: FhirApi) -> None:
    before, broken, after = (uuid.uuid4().hex for _ in range(3))
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient(before), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient(broken, faulty=True), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient(after), "request": {"method": "POST", "url": "Patient"}},
    ]}
    r = api.post("", json=bundle)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert [s.split()[0] for s in statuses] == ["201", "500", "201"]
    outcome = r.json()["entry"][1]["response"]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome" and "entry 1" in outcome["issue"][0]["diagnostics"]
    assert (stored(api, before), stored(api, broken), stored(api, after)) == (1, 0, 1)


def test_a_transaction_with_an_entry_that_fails_halfway_writes_nothing(api: FhirApi) -> None:
    first, broken = uuid.uuid4().hex, uuid.uuid4().hex
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": patient(first),
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": patient(broken, faulty=True),
         "request": {"method": "POST", "url": "Patient"}},
    ]}
    r = api.post("", json=bundle)
    assert r.status_code == 500 and r.json()["resourceType"] == "OperationOutcome", r.text
    assert (stored(api, first), stored(api, broken)) == (0, 0)
